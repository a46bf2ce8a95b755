"""How well the judge reads ground-truth renders: detection, attributes, concepts.

`measure(judge, task, n, seed)` renders `n` fresh scenes of the task's layout
(`task.scene(seed, i)`), reads them with the judge and compares with ground
truth:

- detection: judged objects are matched one-to-one to true ones, greedily by
  distance, within the objects task's RADIUS (0.08); precision = matched /
  judged, recall = matched / true;
- attributes: accuracy of shape, color, size, material on matched objects;
- scenes read exactly: every object found, none extra, all attributes right;
- concept agreement: for each scene, true concepts (`task.sample_concept`) and
  false ones (a true one perturbed until it is false on the true scene,
  `task.false_concept`), the fraction where `holds(c, judged) == holds(c, true)`.

Seeds: use seeds >= 900_000_000 here; bench/train_judge.py trains on
1_000_000 .. 1_600_000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compdiff.eval.judge import Judge
from compdiff.world.render import render
from compdiff.world.scene import Scene
from compdiff.world.tasks import RADIUS, Task, get_task

ATTRS = ("shape", "color", "size", "material")


@dataclass
class TaskAccuracy:
    """Counts for one task; the ratios are properties."""

    task: str
    scenes: int = 0
    true_objects: int = 0
    judged_objects: int = 0
    matched: int = 0
    exact_scenes: int = 0
    attr_correct: dict | None = None
    true_concepts: int = 0
    true_agree: int = 0
    false_concepts: int = 0
    false_agree: int = 0

    @property
    def precision(self) -> float:
        return self.matched / max(self.judged_objects, 1)

    @property
    def recall(self) -> float:
        return self.matched / max(self.true_objects, 1)

    def attr_acc(self, name: str) -> float:
        return (self.attr_correct or {}).get(name, 0) / max(self.matched, 1)

    @property
    def true_agreement(self) -> float:
        return self.true_agree / max(self.true_concepts, 1)

    @property
    def false_agreement(self) -> float:
        return self.false_agree / max(self.false_concepts, 1)

    @property
    def agreement(self) -> float:
        return (self.true_agree + self.false_agree) / max(self.true_concepts + self.false_concepts, 1)

    @property
    def exact(self) -> float:
        return self.exact_scenes / max(self.scenes, 1)


def match_objects(true: Scene, judged: Scene, radius: float = RADIUS) -> list[tuple[int, int]]:
    """One-to-one (true index, judged index) pairs within `radius`, nearest first."""
    pairs = sorted(
        ((t.x - j.x) ** 2 + (t.y - j.y) ** 2, ti, ji)
        for ti, t in enumerate(true.objects)
        for ji, j in enumerate(judged.objects)
    )
    used_t, used_j, out = set(), set(), []
    for d2, ti, ji in pairs:
        if d2 <= radius * radius and ti not in used_t and ji not in used_j:
            used_t.add(ti)
            used_j.add(ji)
            out.append((ti, ji))
    return out


def false_concept(task: Task, concept: Any, scene: Scene, rng: np.random.Generator) -> Any | None:
    """A concept like the true `concept` but false on `scene` (None if none found): the
    task's own perturbation, `task.false_concept` (e.g. objects: a near-miss position)."""
    return task.false_concept(concept, scene, rng)


@torch.no_grad()
def measure(
    judge: Judge,
    task_name: str,
    n: int,
    seed: int,
    concepts_per_scene: int = 4,
    batch_size: int = 256,
) -> TaskAccuracy:
    """Judge `n` fresh renders of `task_name`'s scenes (seed `seed`) against the truth."""
    task = get_task(task_name)
    resolution = judge.config.resolution
    acc = TaskAccuracy(task.name, attr_correct={a: 0 for a in ATTRS})
    rng = np.random.default_rng([seed, 7])
    for start in range(0, n, batch_size):
        scenes = [task.scene(seed, i) for i in range(start, min(n, start + batch_size))]
        judged = judge.read(render(scenes, resolution), layout=task.layout)
        for true, read in zip(scenes, judged):
            _count_scene(acc, task, true, read, rng, concepts_per_scene)
    return acc


def _count_scene(acc: TaskAccuracy, task, true: Scene, read: Scene, rng, k: int) -> None:
    pairs = match_objects(true, read)
    acc.scenes += 1
    acc.true_objects += len(true.objects)
    acc.judged_objects += len(read.objects)
    acc.matched += len(pairs)
    all_right = len(pairs) == len(true.objects) == len(read.objects)
    for ti, ji in pairs:
        for a in ATTRS:
            ok = getattr(true.objects[ti], a) == getattr(read.objects[ji], a)
            acc.attr_correct[a] += ok
            all_right &= ok
    acc.exact_scenes += all_right
    for _ in range(k):
        c = task.sample_concept(true, rng)
        acc.true_concepts += 1
        acc.true_agree += task.holds(c, read) == task.holds(c, true)
        f = false_concept(task, c, true, rng)
        if f is not None:
            acc.false_concepts += 1
            acc.false_agree += task.holds(f, read) == task.holds(f, true)


def markdown_table(results: list[TaskAccuracy]) -> str:
    """One row per task: detection, attributes, exact scenes, concept agreement (%)."""
    head = (
        "| task | scenes | precision | recall | shape | color | size | material | scene exact "
        "| agree (true c.) | agree (false c.) | agree (all) |"
    )
    rows = [head, "|" + "---|" * 12]
    for r in results:
        cells = [r.precision, r.recall, *(r.attr_acc(a) for a in ATTRS), r.exact]
        cells += [r.true_agreement, r.false_agreement, r.agreement]
        rows.append(f"| {r.task} | {r.scenes} | " + " | ".join(f"{100 * v:.2f}" for v in cells) + " |")
    return "\n".join(rows)
