"""``WorldDataset``: (image, condition row, is_null) pairs, deterministic per index.

Sample ``i`` depends only on ``(seed, i)``: the scene is ``task.scene(seed, i)``
(``scene_at(seed, i, ...)``) and the label is drawn from its own generator
seeded with ``[seed, i, 1]`` (first the null-dropout coin, then the concept),
so the same index gives the same sample in any order and training resumes
exactly. ``batch(indices)`` renders all scenes in one vectorised call and
equals stacking ``__getitem__``.

Return types (NamedTuples, so they unpack like tuples):

- ``joint=False``: ``Sample(image (3,R,R) float32 in [-1,1], cond (D,),
  is_null bool)``; with is_null the cond is the task's null row.
  ``batch`` -> ``Sample(images (B,3,R,R), cond (B,D), is_null (B,) bool)``.
- ``joint=True``: ``JointSample(image, cond (Kmax,D), mask (Kmax,) bool)``:
  all concepts true in the scene (``task.true_concepts``, canonical order),
  padded with null rows; ``mask`` marks the real rows (``mask.sum()`` is the
  count). ``Kmax = max_concepts`` or ``task.max_true()`` (objects 5, relations
  40, attributes 4). When more are true than Kmax, a random subset (drawn
  from the label generator, kept in canonical order) is returned. No null
  dropout in joint mode. ``batch`` stacks to (B,Kmax,D) and (B,Kmax).

  With ``joint_subsets``, the label is instead a random non-empty subset of
  them (size uniform in 1..min(true, Kmax)), so that every set size asked at
  evaluation lies inside the joint model's training distribution.

``omit_prob`` (relations, described; default the task's own, 0.3) is the chance that a
one-concept label leaves out each attribute word. 0 labels every image with a complete
description, as a joint label lists its concepts: the composed side of a comparison with a
joint model then learns the same concepts the joint model reads. A joint label lists its
concepts whole unless ``omit_prob`` is given: then each concept of it leaves out words with
that chance (``task.leave_out_words``), so both sides of a comparison can be trained on the
same words-left-out labels.

``max_objects`` (default: the task's own) caps the objects per scene, e.g. to
train on scenes of at most 2 objects and test composition beyond them.
``hold_out`` (a ``world.holdout`` split) redraws every scene that shows one of
its combinations, in both paths, so no object of any training image shows one.

On the training device (opt-in): ``device_batch(generator, B, device)`` draws a
whole ``Sample`` batch with the torch path of world/batch.py (scenes, labels,
null dropout and renders as tensors on ``device``): the same distributions as
``batch``, respecting ``max_objects``, but a function of the generator, not of
indices. ``step_generator(step, rank, device)`` makes that generator from
``(seed, step, rank)``, so a resumed run draws the same batches. Labels come from the
task's ``sample_rows`` hook (a tensor kernel for the built-in tasks, a generic host path
for any other), ``joint=False`` only.
"""
from __future__ import annotations

import copy
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from compdiff.errors import InputError
from compdiff.world.batch import label_batch, make_generator, render_batch, sample_scene_batch
from compdiff.world.holdout import MAX_ATTEMPTS, HoldOut
from compdiff.world.render import render
from compdiff.world.scene import Scene, scene_at
from compdiff.world.tasks import Task, get_task


class Sample(NamedTuple):
    image: Tensor   # (3, R, R) or (B, 3, R, R)
    cond: Tensor    # (D,) or (B, D)
    is_null: bool | Tensor  # bool, or (B,) bool


class JointSample(NamedTuple):
    image: Tensor   # (3, R, R) or (B, 3, R, R)
    cond: Tensor    # (Kmax, D) or (B, Kmax, D)
    mask: Tensor    # (Kmax,) or (B, Kmax) bool


def check_max_objects(task: Task, max_objects: int | None) -> int:
    """The cap on objects per scene: ``max_objects``, or the task's own when None; outside the
    task's range it is an InputError (a ValueError)."""
    if max_objects is None:
        return task.max_objects
    if not task.min_objects <= int(max_objects) <= task.max_objects:
        raise InputError(f"max objects per scene for task {task.name} must be in "
                         f"[{task.min_objects}, {task.max_objects}], got {max_objects}")
    return int(max_objects)


def check_omit_prob(task: Task, omit_prob: float | None, joint: bool) -> None:
    """InputError unless ``omit_prob`` (None: the task's own) can apply: a task whose labels leave
    out words (``task.omit_prob``; for joint labels also ``task.leave_out_words``), a chance in
    [0, 1)."""
    if omit_prob is None:
        return
    if not hasattr(task, "omit_prob"):
        raise InputError(f"it applies to tasks whose labels leave out words (relations, described), not {task.name}")
    if joint and not hasattr(task, "leave_out_words"):
        raise InputError(f"task {task.name} cannot leave words out of a joint label (no leave_out_words)")
    if isinstance(omit_prob, bool) or not isinstance(omit_prob, (int, float)) or not 0.0 <= omit_prob < 1.0:
        raise InputError(f"it must be a chance in [0, 1), got {omit_prob!r}")


class WorldDataset(Dataset):
    def __init__(self, task: str | Task, resolution: int, seed: int, null_prob: float = 0.1,
                 length: int = 100_000, joint: bool = False,
                 max_concepts: int | None = None, max_objects: int | None = None,
                 hold_out: HoldOut | None = None, joint_subsets: bool = False,
                 omit_prob: float | None = None) -> None:
        self.task = get_task(task)
        try:
            check_omit_prob(self.task, omit_prob, joint)
        except InputError as err:
            raise InputError(f"omit_prob: {err}") from None
        if omit_prob is not None:  # this dataset's own copy of the task, never the registered one
            self.task = copy.copy(self.task)
            self.task.omit_prob = float(omit_prob)
        if hold_out is not None and hold_out.task != self.task.name:
            raise InputError(f"the held-out split {hold_out.name!r} belongs to task {hold_out.task}, "
                             f"not {self.task.name}")
        if hold_out is not None and hold_out.max_objects is not None:
            max_objects = min(hold_out.max_objects, max_objects or hold_out.max_objects)
        self.max_objects = check_max_objects(self.task, max_objects)
        self.hold_out = hold_out
        if joint_subsets and not joint:
            raise InputError("joint_subsets applies to joint datasets (joint=True) only")
        self.joint_subsets = joint_subsets
        self.joint_omit = joint and omit_prob is not None  # joint labels leave out words only when asked
        if not 0.0 <= null_prob <= 1.0:
            raise ValueError(f"null_prob must be in [0, 1], got {null_prob}")
        if length < 1 or seed < 0:
            raise ValueError("need length >= 1 and seed >= 0")
        self.resolution, self.seed, self.null_prob = int(resolution), int(seed), null_prob
        self.length, self.joint = int(length), joint
        self.max_concepts = int(max_concepts or self.task.max_true())

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        return self._scene(self._check(index))

    def _scene(self, index: int) -> Scene:
        if self.hold_out is None:
            if self.max_objects == self.task.max_objects:
                return self.task.scene(self.seed, index)
            return scene_at(self.seed, index, self.task.min_objects, self.max_objects, self.task.layout)
        # a held-out split: the index is drawn again (attempt 1, 2, ...) until it shows none of the split
        for attempt in range(MAX_ATTEMPTS):
            scene = scene_at(self.seed, index, self.task.min_objects, self.max_objects, self.task.layout, attempt)
            if self.hold_out.allows(scene):
                return scene
        raise InputError(f"scene {index}: {MAX_ATTEMPTS} draws all show a combination the split "
                         f"{self.hold_out.name!r} holds out")

    def _check(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range [0, {self.length})")
        return index

    def _label(self, index: int, scene: Scene) -> tuple[Tensor, bool | Tensor]:
        rng = np.random.default_rng([self.seed, index, 1])
        if self.joint:
            true = self.task.true_concepts(scene)
            if self.joint_subsets and true:  # a random non-empty subset: every K asked later is in training
                size = int(rng.integers(1, min(len(true), self.max_concepts) + 1))
                true = [true[k] for k in np.sort(rng.permutation(len(true))[:size])]
            elif len(true) > self.max_concepts:
                keep = np.sort(rng.permutation(len(true))[: self.max_concepts])
                true = [true[k] for k in keep]
            if self.joint_omit:  # after the choice above: the same concepts as without, words left out
                true = [self.task.leave_out_words(c, rng) for c in true]
            cond = self.task.null_row().repeat(self.max_concepts, 1)
            if true:
                cond[: len(true)] = self.task.to_tensor(true)
            mask = torch.zeros(self.max_concepts, dtype=torch.bool)
            mask[: len(true)] = True
            return cond, mask
        is_null = bool(rng.random() < self.null_prob)
        concept = self.task.sample_concept(scene, rng)  # drawn even if null: fixed stream
        row = self.task.null_row() if is_null else self.task.to_tensor([concept])
        return row[0], is_null

    def __getitem__(self, index: int) -> Sample | JointSample:
        index = self._check(index)
        scene = self._scene(index)
        cond, flag = self._label(index, scene)
        image = render([scene], self.resolution)[0]
        return (JointSample if self.joint else Sample)(image, cond, flag)

    def batch(self, indices: Sequence[int] | Tensor) -> Sample | JointSample:
        """All ``indices`` at once: one render call; equals stacking __getitem__."""
        idx = [self._check(i) for i in (indices.tolist() if isinstance(indices, Tensor)
                                        else indices)]
        scenes = [self._scene(i) for i in idx]
        labels = [self._label(i, s) for i, s in zip(idx, scenes)]
        images = render(scenes, self.resolution)
        cond = torch.stack([c for c, _ in labels]) if labels else \
            torch.zeros((0, *self.task.null_row().shape[1:]), dtype=self.task.dtype)
        if self.joint:
            return JointSample(images, cond, torch.stack([m for _, m in labels]))
        return Sample(images, cond, torch.tensor([f for _, f in labels], dtype=torch.bool))

    def step_generator(self, step: int, rank: int = 0,
                       device: torch.device | str = "cpu") -> torch.Generator:
        """The generator for ``device_batch`` at a training step, on ``device``: seeded
        from (seed, step, rank) only (a stream apart from the per-index labels')."""
        entropy = [self.seed, int(step), int(rank), 2]
        state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
        return torch.Generator(device=torch.device(device)).manual_seed(int(state[0]))

    def device_batch(self, generator: torch.Generator | int, batch_size: int,
                     device: torch.device | str) -> Sample:
        """``batch_size`` fresh samples drawn and rendered on ``device`` (world/batch.py):
        ``Sample(images (B, 3, R, R), cond (B, D), is_null (B,) bool)``, all on ``device``.

        Same distributions as ``batch(indices)`` (scenes within ``max_objects``, one
        true concept per scene, null rows with probability ``null_prob``), not the same
        samples. ``generator`` must be on ``device`` (an int seeds a new one). Labels are
        the task's ``sample_rows``. Joint datasets have the Python path only: InputError.
        """
        if self.joint:
            raise InputError("device_batch draws one concept per image; a joint dataset "
                             "(joint=True) has the Python path only: use batch(indices)")
        gen = make_generator(generator, device)
        scenes = sample_scene_batch(gen, batch_size, device, self.task.min_objects,
                                    self.max_objects, self.task.layout,
                                    allows=self.hold_out.allows_batch if self.hold_out else None)
        cond, is_null = label_batch(self.task, scenes, gen, self.null_prob)
        return Sample(render_batch(scenes, self.resolution), cond, is_null)
