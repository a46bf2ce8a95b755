"""Concept sets for the composition tables: K concepts that hold together in a real scene.

As the paper's test label sets, every set is read off a rendered ground-truth scene, so it
is jointly satisfiable by construction; that scene's render is the "real" image of the
set (for FD-judge). With ``negate``, one more concept is added under NOT: a concept that
is true in some other scene of the world but false in this one, and that the task lets
join the positives (``Task.negation_compatible``: for attributes, of a kind that no
positive concept names, as in ``red AND cube AND NOT metal``). K runs up to the task's
``max_k``; scenes hold at least ``task.min_objects_for(k)`` objects.

Set i of size K depends only on (seed, K, i). With a held-out split (``compdiff.world.holdout``),
``sets="seen"`` keeps only the sets that ask for no held-out combination and ``sets="held-out"``
only those that ask for at least one (each still read off a real scene, so still jointly
satisfiable); both draw from the same stream as ``sets="all"`` and skip the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from compdiff.errors import InputError
from compdiff.expr import quote
from compdiff.world.holdout import HoldOut
from compdiff.world.scene import Scene, scene_at
from compdiff.world.tasks import Task

Sets = Literal["all", "seen", "held-out"]
#: draws per requested set before a filter is declared unsatisfiable
MAX_DRAWS_PER_SET = 2000


@dataclass(frozen=True)
class ConceptSet:
    positives: tuple[Any, ...]
    negative: Any | None
    scene: Scene  # a ground-truth scene where the set holds

    def expression(self, task: Task) -> str:
        text = " AND ".join(quote(task.format(c)) for c in self.positives)
        return text + (f" AND NOT {quote(task.format(self.negative))}" if self.negative is not None else "")

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
        rng = np.random.default_rng([base, i])
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
