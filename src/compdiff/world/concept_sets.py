"""Concept sets for the composition tables: K concepts that hold together in a real scene.

They are world data (ground-truth scenes and the concepts true in them), so they live in
``world`` (layer 7); ``compdiff.eval.concept_sets`` re-exports them for older imports.

As the paper's test label sets, every set is read off a rendered ground-truth scene, so it
is jointly satisfiable by construction; that scene's render is the "real" image of the
set (for FD-judge). With ``negate``, one more concept is added under NOT: a concept that
is true in some other scene of the world but false in this one, and that the task lets
join the positives (``Task.negation_compatible``: for attributes, of a kind that no
positive concept names, as in ``red AND cube AND NOT metal``). K runs up to the task's
``max_k``; scenes hold at least ``task.min_objects_for(k)`` objects.

Set i of size K depends only on (seed, K, i): its scene is ``scene_at(base, i)`` and its concepts
are chosen with a generator of their own, ``default_rng([base, i, SETS_STREAM])``. (Sets version
1, before 2026-12-01, chose them with ``default_rng([base, i])``, which numpy's SeedSequence
makes the very stream the scene was drawn from, since it pads short entropy with zeros:
which concepts a set asked was then a function of the scene's own attributes, e.g. no set
asked "gray" of a gray cube, and held-out sets covered 5 of the 10 held-out attribute pairs.
``SETS_VERSION`` = 2 is the fixed draw; a report records it and resumes only with it.)

With a held-out split (``compdiff.world.holdout``),
``sets="seen"`` keeps only the sets that ask for no held-out combination and ``sets="held-out"``
only those that ask for at least one (each still read off a real scene, so still jointly
satisfiable); both draw from the same stream as ``sets="all"`` and skip the others.

Regions (tasks whose concepts are single objects, ``Task.region_center``: described): each
positive concept gets a square box of side ``size`` centred on the real object of the set's
scene that it describes, moved (not shrunk) to lie inside the image, and corners printed with
3 decimals (``region_box``); ``ConceptSet.expression(task, regions=size)`` writes every positive
concept with its box, ``"a small red metal cube" @ (0.100, 0.200, 0.500, 0.600)`` (x0, y0, x1,
y1; origin top left, y down), the negated concept without one. ``in_region`` checks a judged
scene against those boxes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from compdiff.errors import InputError
from compdiff.expr import quote
from compdiff.world.holdout import HoldOut
from compdiff.world.scene import Scene, scene_at
from compdiff.world.tasks import Task, get_task, task_names

Sets = Literal["all", "seen", "held-out"]
#: the concept sets' draw (see the module docstring); reports record it
SETS_VERSION = 2
#: the last entropy word of the generator that chooses a set's concepts; the scene's stream is
#: (base, i, 0) (scene_at), the training labels' (seed, i, 1) (WorldDataset)
SETS_STREAM = 5
#: draws per requested set before a filter is declared unsatisfiable
MAX_DRAWS_PER_SET = 2000
#: the default side of a concept's box (a fraction of the image side)
REGION_SIZE = 0.4

Box = tuple[float, float, float, float]  # x0, y0, x1, y1: fractions of the image, origin top left


def has_regions(task: Task) -> bool:
    """Whether ``task``'s concepts are single objects that get boxes (it implements ``region_center``)."""
    return type(task).region_center is not Task.region_center


def region_tasks() -> list[str]:
    """The registered tasks whose concepts are single objects (``has_regions``)."""
    return [n for n in task_names() if has_regions(get_task(n))]


def check_regions(task: Task, method: str = "composed-regions") -> None:
    """InputError unless ``task`` gives its concepts boxes (``has_regions``)."""
    if not has_regions(task):
        raise InputError(f"{method} needs a task whose concepts are single objects: "
                         f"{', '.join(region_tasks()) or 'none is registered'} (not {task.name})")


def region_box(x: float, y: float, size: float = REGION_SIZE) -> Box:
    """The square box of side ``size`` (0 < size <= 1) centred on (x, y), moved back into [0, 1]^2
    where it sticks out (its size is kept), corners rounded to 3 decimals (what the expression
    prints: x1 - x0 = size exactly when size has at most 3 decimals)."""
    if not 0.0 < size <= 1.0:
        raise InputError(f"the region size must be in (0, 1], got {size}")

    def lo(c: float) -> float:
        return round(min(max(c - size / 2, 0.0), 1.0 - size), 3)

    x0, y0 = lo(x), lo(y)
    return x0, y0, round(min(x0 + size, 1.0), 3), round(min(y0 + size, 1.0), 3)


def format_box(box: Box) -> str:
    """``@ (x0, y0, x1, y1)`` with 3 decimals, the region syntax of compdiff.expr."""
    return "@ (" + ", ".join(f"{v:.3f}" for v in box) + ")"


def inside(x: float, y: float, box: Box) -> bool:
    """Is (x, y) in the closed box?"""
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


@dataclass(frozen=True)
class ConceptSet:
    positives: tuple[Any, ...]
    negative: Any | None
    scene: Scene  # a ground-truth scene where the set holds

    def expression(self, task: Task, regions: float | None = None) -> str:
        """The set as an expression; with ``regions`` (a box size), each positive concept
        confined to its box (``boxes``)."""
        texts = [quote(task.format(c)) for c in self.positives]
        if regions is not None:
            texts = [f"{t} {format_box(b)}" for t, b in zip(texts, self.boxes(task, regions))]
        text = " AND ".join(texts)
        return text + (f" AND NOT {quote(task.format(self.negative))}" if self.negative is not None else "")

    def boxes(self, task: Task, size: float = REGION_SIZE) -> tuple[Box, ...]:
        """Per positive concept, the box of side ``size`` around the object of ``scene`` it
        describes (``region_box``). InputError for a task without ``region_center``."""
        check_regions(task)
        out = []
        for c in self.positives:
            center = task.region_center(c, self.scene)
            if center is None:
                raise ValueError(f"{task.format(c)!r} describes no object of the set's scene")
            out.append(region_box(*center, size))
        return tuple(out)

    def in_region(self, task: Task, scene: Scene, size: float = REGION_SIZE) -> list[bool]:
        """Per positive concept: does some object of ``scene`` (a judged one) that the concept
        describes have its centre inside the concept's box? (``task.holds`` without its box.)"""
        return [task.holds(c, Scene(tuple(o for o in scene.objects if inside(o.x, o.y, b)), scene.layout))
                for c, b in zip(self.positives, self.boxes(task, size))]

    def satisfied_by(self, task: Task, scene: Scene) -> bool:
        ok = all(task.holds(c, scene) for c in self.positives)
        return ok and (self.negative is None or not task.holds(self.negative, scene))


def _positives(task: Task, scene: Scene, k: int, rng: np.random.Generator) -> tuple | None:
    pool = task.true_concepts(scene)
    if len(pool) < k:
        return None
    idx = rng.choice(len(pool), size=k, replace=False)
    return tuple(pool[i] for i in sorted(idx))


def _negative(task: Task, scene: Scene, positives: tuple, rng: np.random.Generator, seed: int) -> Any | None:
    for _ in range(100):
        other = scene_at(seed + 1, int(rng.integers(0, 2**31)), task.min_objects, task.max_objects, task.layout)
        cand = task.sample_concept(other, rng)
        if not task.negation_compatible(cand, positives):
            continue
        if not task.holds(cand, scene) and cand not in positives:
            return cand
    return None


def concept_sets(task: Task, k: int, n: int, seed: int = 7, negate: bool = False, sets: Sets = "all",
                 split: HoldOut | None = None) -> list[ConceptSet]:
    """n sets of k positive concepts (plus one negated with ``negate``), each true in a real scene;
    ``sets`` and ``split`` filter them (see the module docstring)."""
    if not 1 <= k <= task.max_k:
        raise ValueError(f"{task.name}: K must be in 1..{task.max_k}, got {k}")
    if sets not in ("all", "seen", "held-out"):
        raise InputError(f"sets must be 'all', 'seen' or 'held-out', got {sets!r}")
    if sets != "all" and (split is None or split.task != task.name):
        raise InputError(f"sets={sets!r} needs a held-out split of the {task.name} task")
    base = seed * 1_000_003 + k * 10_007 + (500_000 if negate else 0)
    found, i = [], 0
    while len(found) < n:
        if i >= MAX_DRAWS_PER_SET * n:
            raise InputError(f"{task.name}, K = {k}: found {len(found)} of {n} {sets} sets of the split "
                             f"{split.name!r} in {i} draws; that K has (almost) none")
        rng = np.random.default_rng([base, i, SETS_STREAM])
        scene = scene_at(base, i, task.min_objects_for(k), task.max_objects, task.layout)
        i += 1
        pos = _positives(task, scene, k, rng)
        if pos is None:
            continue
        if sets != "all" and bool(split.asked(pos)) != (sets == "held-out"):
            continue
        neg = _negative(task, scene, pos, rng, base) if negate else None
        if negate and neg is None:
            continue
        found.append(ConceptSet(pos, neg, scene))
    return found


__all__ = ["Sets", "SETS_VERSION", "SETS_STREAM", "MAX_DRAWS_PER_SET", "REGION_SIZE", "Box", "ConceptSet",
           "concept_sets", "has_regions", "region_tasks", "check_regions", "region_box", "format_box", "inside"]
