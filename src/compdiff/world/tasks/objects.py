"""The ``objects`` task (the paper's CLEVR Objects): a concept is a position.

Text: ``0.30,0.62``; also accepted ``(0.30, 0.62)`` and ``object at 0.30,0.62``
(case-insensitive, any spacing). ``format`` prints two decimals, ``0.30,0.62``:
``parse(format(c))`` is ``c`` rounded to 2 decimals and prints back the same.
Tensor: float32 rows ``[x, y, 1.0]``; the null row is ``[0, 0, 0]``.

``holds(p, scene)``: some object's center lies within ``RADIUS = 0.08`` of p
(inclusive). Sampled centers are >= 0.18 apart (two small objects, see
scene.py), more than twice the radius, so a position never matches two
distinct objects, and the 2-decimal print (error <= 0.005) keeps a true
position true.

Evaluation: K positions need K objects, so a K-set is drawn from scenes of at
least K objects (``min_objects_for``); ``extra_metrics`` counts judged objects
that no requested position accounts for. The model reads the position
directly (``cond_kind`` "position"), not through token tables.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

from compdiff.world.batch import SceneBatch, uniform_choice
from compdiff.world.scene import Scene
from compdiff.world.tasks.base import Task, parse_error

if TYPE_CHECKING:
    from compdiff.world.concept_sets import ConceptSet

RADIUS = 0.08

_ACCEPTED = ("a position x,y with 0 <= x <= 1 and 0 <= y <= 1, written "
             "'0.30,0.62', '(0.30, 0.62)' or 'object at 0.30,0.62'")
_NUM = r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
_RE = re.compile(r"^\s*(?:object\s+at\s+)?(\()?\s*" + _NUM + r"\s*,\s*" + _NUM
                 + r"\s*(\))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Position:
    """A point in image coordinates: x right, y down, both in [0, 1]."""

    x: float
    y: float


class ObjectsTask(Task[Position]):
    name = "objects"
    help = "a position x,y in [0, 1] where an object's center lies, e.g. '0.30,0.62'"
    max_k = 5
    layout = "free"
    min_objects, max_objects = 1, 5
    row_dim = 3
    dtype = torch.float32
    radius = RADIUS

    def parse(self, text: str) -> Position:
        m = _RE.match(text)
        if m is None or bool(m.group(1)) != bool(m.group(4)):
            raise parse_error(text, _first_bad(text), f"malformed position {text.strip()!r}",
                              _ACCEPTED)
        vals = []
        for g in (2, 3):
            v = float(m.group(g))
            if not (0.0 <= v <= 1.0) or math.isnan(v):
                axis = "x" if g == 2 else "y"
                raise parse_error(text, m.start(g),
                                  f"{axis} = {m.group(g)} is out of range [0, 1]", _ACCEPTED)
            vals.append(v)
        return Position(vals[0], vals[1])

    def format(self, concept: Position) -> str:
        return f"{concept.x:.2f},{concept.y:.2f}"

    def holds(self, concept: Position, scene: Scene) -> bool:
        r2 = RADIUS * RADIUS + 1e-12
        return any((o.x - concept.x) ** 2 + (o.y - concept.y) ** 2 <= r2
                   for o in scene.objects)

    def true_concepts(self, scene: Scene) -> list[Position]:
        return [Position(o.x, o.y) for o in scene.objects]

    def sample_concept(self, scene: Scene, rng: np.random.Generator) -> Position:
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        return Position(o.x, o.y)

    def sample_rows(self, scenes: SceneBatch, generator: torch.Generator) -> Tensor:
        """(B, 3) float32 [x, y, 1] of a uniform object of each scene, on the device."""
        j = uniform_choice(scenes.valid, generator)[:, None]
        return torch.cat([scenes.x.gather(1, j), scenes.y.gather(1, j), torch.ones_like(scenes.x[:, :1])], 1)

    def max_true(self, max_objects: int | None = None) -> int:
        return max_objects or self.max_objects

    def false_concept(self, concept: Position, scene: Scene,
                      rng: np.random.Generator) -> Position | None:
        """A near miss: the position moved 1.25-3 radii in a random direction."""
        def perturb() -> Position:
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(1.25, 3.0) * RADIUS
            return Position(float(np.clip(concept.x + dist * np.cos(angle), 0, 1)),
                            float(np.clip(concept.y + dist * np.sin(angle), 0, 1)))
        return self.first_false(perturb, scene)

    def min_objects_for(self, k: int) -> int:
        return max(self.min_objects, min(k, self.max_objects))

    def extra_metrics(self, sets: Sequence[ConceptSet],
                      judged: Sequence[Scene]) -> dict[str, float]:
        """``extra_objects``: per image, the judged objects farther than the radius
        from every requested position (what a composition adds uninvited)."""
        extra = [sum(1 for o in j.objects if all((o.x - c.x) ** 2 + (o.y - c.y) ** 2 > RADIUS**2
                                                 for c in s.positives))
                 for s, j in zip(sets, judged)]
        return {"extra_objects": float(np.mean(extra))}

    def condition_spec(self) -> dict[str, Any]:
        return {"cond_kind": "position", "vocab_sizes": ()}

    def concept_row(self, concept: Position) -> list[float]:
        return [concept.x, concept.y, 1.0]

    def row_concept(self, row) -> Position:
        return Position(float(row[0]), float(row[1]))


def _first_bad(text: str) -> int:
    """Column of the first character that cannot belong to a position."""
    s = text.lower()
    i = len(s) - len(s.lstrip())
    if s[i:].startswith("object at"):
        i += len("object at")
    for j in range(i, len(s)):
        if not (s[j].isdigit() or s[j] in " .,()+-e"):
            return j
    return i
