"""Held-out splits: named, deterministic sets of combinations a training world never shows.

The paper's claim is that composed models generate combinations they never saw together.
To test it, a split removes combinations from EVERY object of EVERY training scene (labelled
or not): a scene that shows one is redrawn. Evaluation then asks for the held-out
combinations (``compdiff eval --sets held-out``) and for seen ones (``--sets seen``).

Splits (``SPLITS``; ``compdiff world hold-out --task T --name NAME`` prints one as JSON):

* attributes ``default``: 6 of the 24 (color, shape) pairs and 4 of the 16 (color, material)
  pairs, about 25% of each, chosen so that every single value (each color, shape and
  material) still appears in training, and with every pair of a value still present.
* relations ``default``: 7 of the 28 unordered pairs of distinct colors never appear together in
  a scene. Any two objects of a scene stand in some relation in both orders (a left of b is
  b right of a), so "(first color, second color) never in a relation" is exactly "never in the
  same scene".
* objects ``le2``: scenes of at most 2 objects; sets of K >= 3 positions are beyond training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Sequence

import torch
from torch import Tensor

from compdiff.errors import InputError
from compdiff.world.scene import COLORS, MATERIALS, SHAPES, SIZES, Scene

#: kinds whose value pairs a split may hold out within one object
WITHIN = ("color,shape", "color,material")
_VOCAB = {"shape": SHAPES, "color": COLORS, "size": SIZES, "material": MATERIALS}
#: redraws of one scene index before a split is declared impossible to satisfy
MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class HoldOut:
    """A named split of one task's world.

    within: kind pair ("color,shape" / "color,material") -> held-out value pairs of ONE object;
    across: held-out unordered color pairs of TWO objects of a scene;
    max_objects: training scenes have at most this many objects (None: the task's own).
    """

    task: str
    name: str
    description: str
    within: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    across: tuple[tuple[str, str], ...] = ()
    max_objects: int | None = None

    def violations(self, scene: Scene) -> list[str]:
        """The held-out combinations ``scene`` shows, as text (empty: allowed in training)."""
        found = []
        for obj in scene.objects:
            for kinds, pairs in self.within.items():
                k1, k2 = kinds.split(",")
                value = (getattr(obj, k1), getattr(obj, k2))
                if value in pairs:
                    found.append(f"{value[0]} {value[1]}")
        colors = {o.color for o in scene.objects}
        found += [f"{a} with {b}" for a, b in self.across if a in colors and b in colors]
        if self.max_objects is not None and len(scene.objects) > self.max_objects:
            found.append(f"{len(scene.objects)} objects")
        return found

    def allows(self, scene: Scene) -> bool:
        return not self.violations(scene)

    def allows_batch(self, scenes: Any) -> Tensor:
        """(B,) bool: which scenes of a ``world.batch.SceneBatch`` (index tensors (B, K) per attribute,
        ``valid`` mask) show no held-out combination; the vectorised :meth:`allows`."""
        bad = torch.zeros(scenes.valid.shape[0], dtype=torch.bool, device=scenes.valid.device)
        for kinds, pairs in self.within.items():
            k1, k2 = kinds.split(",")
            for a, b in pairs:
                hit = (getattr(scenes, k1) == _VOCAB[k1].index(a)) & (getattr(scenes, k2) == _VOCAB[k2].index(b))
                bad |= (hit & scenes.valid).any(1)
        for a, b in self.across:
            has = [((scenes.color == COLORS.index(c)) & scenes.valid).any(1) for c in (a, b)]
            bad |= has[0] & has[1]
        if self.max_objects is not None:
            bad |= scenes.valid.sum(1) > self.max_objects
        return ~bad

    def asked(self, concepts: Sequence[Any]) -> list[str]:
        """The held-out combinations a concept set asks for (empty: a set of seen combinations).

        attributes (one object): every pair of the set's values of two held-out kinds;
        relations: each relation's (first color, second color), either order; objects: a set of
        more positions than training scenes held objects."""
        found = []
        words = {getattr(c, "kind", None): c.word for c in concepts if hasattr(c, "word")}
        for kinds, pairs in self.within.items():
            k1, k2 = kinds.split(",")
            if (words.get(k1), words.get(k2)) in pairs:
                found.append(f"{words[k1]} {words[k2]}")
        for c in concepts:
            first, second = getattr(c, "first", None), getattr(c, "second", None)
            if first is not None and {first.color, second.color} in [set(p) for p in self.across]:
                found.append(f"{first.color} with {second.color}")
        if self.max_objects is not None and len(concepts) > self.max_objects:
            found.append(f"{len(concepts)} objects")
        return found

    def why_no_sets(self, k: int, sets: str) -> str | None:
        """Why no set of k concepts can be ``sets`` ("seen" / "held-out") under this split, in words;
        None where some can. Decided from the split's form alone (no drawing): a held-out pair of
        one object needs two concepts, a relation can ask for a held-out color pair by itself, and
        a set of more positions than training scenes held is held-out by its size."""
        if sets == "held-out":
            if self.across or (self.within and k >= 2) or (self.max_objects is not None and k > self.max_objects):
                return None
            needs = []
            if self.within:
                needs.append("a held-out pair of one object's values, so K >= 2")
            if self.max_objects is not None:
                needs.append(f"more positions than training scenes held, so K >= {self.max_objects + 1}")
            return f"a held-out set of the split {self.name!r} asks for " + " or ".join(needs)
        if sets == "seen" and self.max_objects is not None and k > self.max_objects:
            return (f"every set of K > {self.max_objects} is held-out under the split {self.name!r} (training "
                    f"scenes held at most {self.max_objects} objects)")
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "name": self.name, "description": self.description}
        if self.within:
            out["within_one_object"] = {k: [list(p) for p in v] for k, v in self.within.items()}
        if self.across:
            out["colors_never_together"] = [list(p) for p in self.across]
        if self.max_objects is not None:
            out["max_objects"] = self.max_objects
        return out


def _attributes_default() -> HoldOut:
    # (color i, shape i mod 3) for the first six colors: each shape loses two colors, each of
    # those colors one shape; cyan and yellow keep all three
    shapes = tuple((COLORS[i], SHAPES[i % 3]) for i in range(6))
    # four colors lose one material each, alternating, so both materials stay with most colors
    materials = ((COLORS[1], MATERIALS[1]), (COLORS[3], MATERIALS[0]), (COLORS[6], MATERIALS[1]),
                 (COLORS[7], MATERIALS[0]))
    return HoldOut("attributes", "default", "6 of 24 (color, shape) and 4 of 16 (color, material) pairs "
                   "never appear on the object", within={"color,shape": shapes, "color,material": materials})


def _relations_default() -> HoldOut:
    # every 4th unordered pair of distinct colors, in a fixed order: 7 of 28, each color in 1-3 of them
    pairs = tuple(combinations(COLORS, 2))[::4]
    return HoldOut("relations", "default", "7 of the 28 pairs of distinct colors never appear in the same "
                   "scene (so never as the first and second object of a relation)", across=pairs)


SPLITS: dict[tuple[str, str], HoldOut] = {
    (s.task, s.name): s for s in (
        _attributes_default(), _relations_default(),
        HoldOut("objects", "le2", "training scenes hold at most 2 objects", max_objects=2))}


def get_split(task: str, name: str) -> HoldOut:
    """The split ``name`` of ``task``; InputError listing the task's splits otherwise (or, for a task
    that does not exist, the tasks)."""
    from compdiff.world.tasks import get_task

    get_task(task)  # an unknown task is named as one, not as a task without splits
    try:
        return SPLITS[(task, name)]
    except KeyError:
        names = ", ".join(n for t, n in SPLITS if t == task) or "none"
        raise InputError(f"no held-out split {name!r} for task {task!r} (splits of {task}: {names})") from None
