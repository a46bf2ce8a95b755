"""Regions: where on the image a term's guidance applies (``"a cat" @ left``). Pure Python.

A region is one of

* a named region: ``left``, ``right``, ``top``, ``bottom``, ``center``, ``top-left``,
  ``top-right``, ``bottom-left``, ``bottom-right`` (each stands for the box in ``NAMED``);
* a box ``(x0, y0, x1, y1)``: fractions of the image width and height in [0, 1], origin at
  the top left, x to the right, y down, with x0 < x1 and y0 < y1;
* a mask ``mask:NAME``: an image or tensor the caller supplies under NAME (the CLI's
  ``--mask NAME=FILE``, or ``masks={"NAME": tensor}`` in Python); NAME is 1-64 characters of
  letters, digits, ``_``, ``.`` and ``-``.

This module only describes regions; ``compdiff.regions`` turns them into masks on a model's
latent grid (resized, feathered), and ``compdiff.compose`` applies them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from compdiff.errors import InputError

Box = tuple[float, float, float, float]

#: the named regions and the boxes they stand for (x0, y0, x1, y1)
NAMED: dict[str, Box] = {
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75),
    "top-left": (0.0, 0.0, 0.5, 0.5),
    "top-right": (0.5, 0.0, 1.0, 0.5),
    "bottom-left": (0.0, 0.5, 0.5, 1.0),
    "bottom-right": (0.5, 0.5, 1.0, 1.0),
}
MASK_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def box_problem(box: object) -> str | None:
    """Why ``box`` is not a valid region box (4 finite numbers in [0, 1], x0 < x1, y0 < y1), or None."""
    if not isinstance(box, (tuple, list)) or len(box) != 4:
        return f"a region box is 4 numbers (x0, y0, x1, y1), got {box!r}"
    for v in box:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"box coordinates must be finite numbers, got {v!r}"
        if not 0.0 <= v <= 1.0:
            return f"box coordinate {v!r} is outside [0, 1] (fractions of the image)"
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        return f"the box ({x0!r}, {y0!r}, {x1!r}, {y1!r}) is empty: it needs x0 < x1 and y0 < y1"
    return None


@dataclass(frozen=True)
class Region:
    """One region: ``Region.named("left")``, ``Region.box(0.1, 0.2, 0.5, 0.9)`` or ``Region.mask("face")``.

    kind: "named" | "box" | "mask"; name: the region's or the mask's name ("" for a box);
    coords: the box (x0, y0, x1, y1) for named and box regions, None for a mask.
    ``str()`` is the text form the parser reads back (``left``, ``(0.1, 0.2, 0.5, 0.9)``, ``mask:face``).
    """

    kind: str
    name: str = ""
    coords: Box | None = None

    def __post_init__(self) -> None:
        if self.kind == "named":
            if self.name not in NAMED:
                raise InputError(f"unknown region {self.name!r}; named regions: {', '.join(NAMED)}")
            object.__setattr__(self, "coords", NAMED[self.name])
        elif self.kind == "box":
            problem = box_problem(self.coords)
            if problem:
                raise InputError(problem)
            object.__setattr__(self, "coords", tuple(float(v) for v in self.coords))  # type: ignore[union-attr]
            object.__setattr__(self, "name", "")
        elif self.kind == "mask":
            if not isinstance(self.name, str) or not MASK_NAME.fullmatch(self.name):
                raise InputError(f"a mask name is 1-64 letters, digits, '_', '.' or '-', got {self.name!r}")
            object.__setattr__(self, "coords", None)
        else:
            raise InputError(f"a region's kind is 'named', 'box' or 'mask', got {self.kind!r}")

    @staticmethod
    def named(name: str) -> "Region":
        return Region("named", name)

    @staticmethod
    def box(x0: float, y0: float, x1: float, y1: float) -> "Region":
        return Region("box", "", (x0, y0, x1, y1))

    @staticmethod
    def mask(name: str) -> "Region":
        return Region("mask", name)

    def sort_key(self) -> tuple:
        return (self.kind, self.name, self.coords or ())

    def __str__(self) -> str:
        if self.kind == "named":
            return self.name
        if self.kind == "mask":
            return "mask:" + self.name
        return "(" + ", ".join(repr(v) for v in self.coords) + ")"  # type: ignore[union-attr]


def format_region(region: Region, decimals: int = 3) -> str:
    """``region`` as expression text, a box with ``decimals`` fixed decimals where they hold its
    coordinates exactly (``(0.100, 0.250, 0.500, 0.900)``, as boxes drawn on a canvas are rounded),
    else ``str(region)``. Parses back to the same region either way."""
    if isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f"decimals must be an integer >= 0, got {decimals!r}")
    if region.kind == "box" and all(round(v, decimals) == v for v in region.coords):  # type: ignore[union-attr]
        return "(" + ", ".join(f"{v + 0.0:.{decimals}f}" for v in region.coords) + ")"  # type: ignore[union-attr]
    return str(region)


def as_region(value: "Region | str | Box | None") -> "Region | None":
    """A Region from a Region, a name (``"left"``, ``"mask:face"``) or a box tuple; None stays None."""
    if value is None or isinstance(value, Region):
        return value
    if isinstance(value, str):
        return Region.mask(value[5:]) if value.startswith("mask:") else Region.named(value)
    if isinstance(value, (tuple, list)):
        return Region("box", "", tuple(value))  # type: ignore[arg-type]
    raise TypeError(f"a region is a Region, a name or a box (x0, y0, x1, y1), got {value!r}")


__all__ = ["NAMED", "Region", "Box", "as_region", "box_problem", "format_region"]
