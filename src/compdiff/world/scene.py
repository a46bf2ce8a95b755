"""Scenes of the synthetic world: objects on a floor, and how they are sampled.

Coordinates are image coordinates in [0, 1]^2: x to the right, y downward
(larger y = nearer the camera). ``Obj.x, Obj.y`` is the center of the object's
drawn footprint (its sprite's bounding box) in a ``"free"`` scene.

An object occupies a disc of radius ``EXTENT[size]`` around its center (its
sprite fits in that disc's bounding square). Sampled objects never overlap
as discs: centers are at least ``EXTENT[a] + EXTENT[b]`` apart (so >= 0.18,
two small objects); only cube corners may touch a neighbour, the "small
margin". Sizes are drawn without perspective: a small object is small
anywhere in the image.

Layouts:

- ``"free"``: 1..5 objects anywhere, fully inside the image.
- ``"centered"`` (the attributes task): exactly ONE object, the main object,
  near the image center (x, y in 0.5 +- 0.03); the renderer zooms in by
  ``ZOOM`` about the image center so it is drawn large. No background objects.
  ``min_objects``/``max_objects`` are ignored for this layout.

Sampling is deterministic: scene ``i`` of ``sample_scenes(n, seed)`` depends
only on ``(seed, i)`` (it is ``scene_at(seed, i)``), so datasets index it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SHAPES = ("cube", "sphere", "cylinder")
COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SIZES = ("small", "large")
MATERIALS = ("rubber", "metal")

#: half-extent (radius of the footprint disc) of each size, image units
EXTENT = {"small": 0.09, "large": 0.14}
#: zoom factor of the "centered" layout, about the image center
ZOOM = 2.3
#: extra free space kept between the border and an object's disc
BORDER = 0.01

Layout = Literal["free", "centered"]
LAYOUTS = ("free", "centered")


@dataclass(frozen=True)
class Obj:
    """One object. ``x, y``: center in [0, 1]^2 (x right, y down)."""

    shape: str
    color: str
    size: str
    material: str
    x: float
    y: float

    def __post_init__(self) -> None:
        for value, vocab in ((self.shape, SHAPES), (self.color, COLORS),
                             (self.size, SIZES), (self.material, MATERIALS)):
            if value not in vocab:
                raise ValueError(f"{value!r} is not one of {vocab}")

    @property
    def extent(self) -> float:
        return EXTENT[self.size]

    def describe(self) -> str:
        """``"large red metal cube at 0.50,0.25"``: one line, as reports and `world render` print it."""
        return f"{self.size} {self.color} {self.material} {self.shape} at {self.x:.2f},{self.y:.2f}"

    @classmethod
    def parse(cls, text: str) -> "Obj":
        """The inverse of :meth:`describe` (positions to its 2 decimals): reads the judged objects that
        eval reports store. A line of another form is a ValueError that quotes it."""
        words = text.split()
        if len(words) != 6 or words[4] != "at" or words[5].count(",") != 1:
            raise ValueError(f"cannot read the object {text!r} (expected e.g. 'large red metal cube at 0.50,0.25')")
        size, color, material, shape = words[:4]
        try:
            x, y = (float(v) for v in words[5].split(","))
            return cls(shape, color, size, material, x, y)
        except ValueError as err:
            raise ValueError(f"cannot read the object {text!r}: {err}") from None


@dataclass(frozen=True)
class Scene:
    """Objects on a floor; ``layout`` tells the renderer whether to zoom in."""

    objects: tuple[Obj, ...]
    layout: Layout = "free"

    @property
    def main(self) -> Obj:
        """The main object of a centered scene (the first object)."""
        return self.objects[0]


def _random_obj_attrs(rng: np.random.Generator) -> tuple[str, str, str, str]:
    i = rng.integers(0, [len(SHAPES), len(COLORS), len(SIZES), len(MATERIALS)])
    return SHAPES[i[0]], COLORS[i[1]], SIZES[i[2]], MATERIALS[i[3]]


def _sample_free(rng: np.random.Generator, n_obj: int) -> tuple[Obj, ...]:
    # random sequential placement; restart on the (rare) dead end
    while True:
        objs: list[Obj] = []
        for _ in range(n_obj):
            shape, color, size, material = _random_obj_attrs(rng)
            e = EXTENT[size]
            lo, hi = e + BORDER, 1.0 - e - BORDER
            for _try in range(200):
                x, y = rng.uniform(lo, hi, size=2)
                if all((x - o.x) ** 2 + (y - o.y) ** 2 >= (e + o.extent) ** 2
                       for o in objs):
                    objs.append(Obj(shape, color, size, material, float(x), float(y)))
                    break
            else:
                break
        if len(objs) == n_obj:
            return tuple(objs)


def scene_at(seed: int, index: int, min_objects: int = 1, max_objects: int = 5,
             layout: Layout = "free", attempt: int = 0) -> Scene:
    """Scene ``index`` of the stream for ``seed`` (depends on nothing else). ``attempt`` > 0 draws
    that index again from a stream of its own (a held-out split redraws scenes it excludes)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not 1 <= min_objects <= max_objects <= 8:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 8, got "
                         f"{min_objects}, {max_objects}")
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be >= 0")
    rng = np.random.default_rng([seed, index, 0] + ([attempt] if attempt else []))
    if layout == "centered":
        shape, color, size, material = _random_obj_attrs(rng)
        x, y = 0.5 + rng.uniform(-0.03, 0.03, size=2)
        return Scene((Obj(shape, color, size, material, float(x), float(y)),), "centered")
    n_obj = int(rng.integers(min_objects, max_objects + 1))
    return Scene(_sample_free(rng, n_obj), "free")


def sample_scenes(n: int, seed: int, min_objects: int = 1, max_objects: int = 5,
                  layout: Layout = "free") -> list[Scene]:
    """``n`` scenes; scene i is ``scene_at(seed, i, ...)``."""
    return [scene_at(seed, i, min_objects, max_objects, layout) for i in range(n)]
