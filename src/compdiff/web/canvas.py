"""The page's two canvases, as plain Python over the expression text (which stays the only state):

* the objects canvas (:func:`canvas_image`): the world with each position concept drawn; a click
  (:func:`click_to_concept`) gives ``"x,y"``, which :func:`add_concept` ANDs to the text;
* the regions canvas (:func:`regions_svg`, every model): the expression's regions drawn as
  labelled rectangles (typed by hand too); a drag (:func:`drag_to_box`) gives a box region for
  the chosen concept (:func:`concept_choices`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from compdiff.errors import InputError
from compdiff.expr import Leaf, Or, format_region, parse, quote
from compdiff.expr.display import excerpt
from compdiff.expr.region import Region

#: display size of the objects canvas (pixels); the world is 32x32
CANVAS_PX = 256
#: display size of the regions canvas (pixels): a square standing for the image, whatever its size
REGION_PX = 256
#: a box dragged on the regions canvas must be at least this wide and tall (a fraction of the image)
MIN_BOX = 0.01
#: one outline colour per concept leaf (cycled); NOT is always red and dashed
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f")
NOT_COLOUR = "#d62728"


def region_text(region: Region | None) -> str:
    """A region as the expression writes it: ``left``, ``(0.100, 0.200, 0.500, 0.900)``, ``mask:face``
    ("" for None). Boxes get 3 decimals where that is exact, else their canonical form."""
    return "" if region is None else format_region(region, 3)


def markers(rows: Sequence[Leaf]) -> list[tuple[float, float, bool]]:
    """The objects canvas's markers: (x, y, negative) for each leaf that is a position concept."""
    from compdiff.world.tasks import get_task

    task = get_task("objects")
    out = []
    for leaf in rows:
        try:
            p = task.parse(leaf.concept)
        except InputError:
            continue
        out.append((p.x, p.y, leaf.negated))
    return out


# --------------------------------------------------------------------------
# the objects canvas (objects task)


def click_to_concept(index: Sequence[float], size: int = CANVAS_PX) -> str:
    """A click at pixel ``index`` = (x, y) of a ``size``-pixel canvas -> ``"x,y"`` in [0, 1]²
    (the pixel's centre, 2 decimals: the objects task's format)."""
    try:
        px, py = float(index[0]), float(index[1])
    except (TypeError, ValueError, IndexError):
        raise InputError(f"a canvas click must give two pixel coordinates, got {excerpt(repr(index), 60)}") from None
    if not (math.isfinite(px) and math.isfinite(py)):
        raise InputError("a canvas click must give finite pixel coordinates")
    x = min(max((px + 0.5) / size, 0.0), 1.0)
    y = min(max((py + 0.5) / size, 0.0), 1.0)
    return f"{x:.2f},{y:.2f}"


def add_concept(text: str, concept: str, negate: bool = False) -> str:
    """``text`` AND the concept (AND NOT with ``negate``). An expression whose top is OR is put
    in parentheses first, so the new concept joins every clause."""
    term = ("NOT " if negate else "") + quote(concept)
    text = (text or "").rstrip()
    if not text.strip():
        return term
    try:
        if isinstance(parse(text), Or):
            text = f"({text})"
    except InputError:
        pass
    return f"{text} AND {term}"


def canvas_image(markers: Sequence[tuple[float, float, bool]], size: int = CANVAS_PX):
    """The objects canvas: a ``size``-pixel square (a 32×32 world) with a light grid, each
    position concept a circle of the task's radius (green: AND, red with a cross: NOT)."""
    from PIL import Image, ImageDraw

    from compdiff.world.tasks import RADIUS

    img = Image.new("RGB", (size, size), (246, 246, 246))
    d = ImageDraw.Draw(img)
    for k in range(1, 8):
        c = round(k * size / 8)
        colour = (200, 200, 200) if k != 4 else (170, 170, 170)
        d.line([(c, 0), (c, size)], fill=colour)
        d.line([(0, c), (size, c)], fill=colour)
    r = RADIUS * size
    for x, y, negative in markers:
        cx, cy = x * size, y * size
        box = [cx - r, cy - r, cx + r, cy + r]
        if negative:
            d.ellipse(box, outline=(200, 30, 30), width=3)
            d.line([(cx - r * 0.6, cy - r * 0.6), (cx + r * 0.6, cy + r * 0.6)], fill=(200, 30, 30), width=3)
            d.line([(cx - r * 0.6, cy + r * 0.6), (cx + r * 0.6, cy - r * 0.6)], fill=(200, 30, 30), width=3)
        else:
            d.ellipse(box, fill=(60, 170, 80), outline=(20, 110, 40), width=2)
    return img


# --------------------------------------------------------------------------
# the regions canvas (every model): boxes dragged on a square standing for the image


def drag_to_box(box: Sequence[float]) -> Region:
    """A drag on the regions canvas -> a box region. ``box``: the drag's two corners
    (x0, y0, x1, y1) as fractions of the canvas (x right, y down), in any order; clamped into
    [0, 1], sorted, rounded to 3 decimals. InputError for anything but 4 finite numbers, or a
    box under ``MIN_BOX`` wide or tall (a click, or a line)."""
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or isinstance(box, (str, bytes)) or any(isinstance(v, bool) for v in box):
        raise InputError(f"a drawn box must give 4 numbers (x0, y0, x1, y1), got {excerpt(repr(box), 60)}")
    if not all(math.isfinite(v) for v in values):
        raise InputError("a drawn box must give finite numbers")
    x0, y0, x1, y1 = (round(min(max(v, 0.0), 1.0), 3) + 0.0 for v in values)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if x1 - x0 < MIN_BOX or y1 - y0 < MIN_BOX:
        raise InputError(f"the box is too small ({x1 - x0:.3f} wide, {y1 - y0:.3f} tall); drag out a box at "
                         f"least {MIN_BOX:g} of the image wide and tall")
    return Region.box(x0, y0, x1, y1)


@dataclass(frozen=True)
class RegionBox:
    """A region to draw: its concept leaf (``index``, 0-based in text order as the sliders;
    the label shows index + 1), the concept, whether it counts against the image, the region."""

    index: int
    concept: str
    negated: bool
    region: Region


def region_boxes(rows: Sequence[Leaf]) -> list[RegionBox]:
    """The leaves (``compdiff.expr.concept_leaves``) that have a region, as boxes to draw."""
    return [RegionBox(i, leaf.concept, leaf.negated, leaf.region) for i, leaf in enumerate(rows)
            if leaf.region is not None]


def leaf_label(i: int, leaf: Leaf, width: int = 48) -> str:
    """``3. NOT a red cube @ left``: a leaf as the sliders and the region chooser name it."""
    region = f" @ {region_text(leaf.region)}" if leaf.region is not None else ""
    return f"{i + 1}. {'NOT ' if leaf.negated else ''}{excerpt(leaf.concept, width)}{region}"


def concept_choices(rows: Sequence[Leaf]) -> list[tuple[str, int]]:
    """The region chooser's entries: (label, leaf index)."""
    return [(leaf_label(i, leaf), i) for i, leaf in enumerate(rows)]


def _attr(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def regions_svg(boxes: Sequence[RegionBox], selected: int | None = None, size: int = REGION_PX) -> str:
    """The regions canvas as SVG markup (all user text escaped): a ``size``-pixel square with a
    light grid (eighths; halves darker), each box region a labelled rectangle (``1. a red cube``,
    one colour per concept, NOT red and dashed; the concept chosen for drawing, ``selected``,
    drawn thicker), and the hidden ``rubber`` rectangle the page's script moves during a drag.
    Masks (not drawn) are listed under the square."""
    s = size
    out = [(f'<svg class="regions" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {s} {s}" width="{s}" '
            f'height="{s}" role="img" aria-label="regions canvas: drag a box">'),
           f'<rect class="bg" x="0" y="0" width="{s}" height="{s}" fill="#f6f6f6"/>']
    for k in range(1, 8):
        c = round(k * s / 8)
        colour = "#aaaaaa" if k == 4 else "#d4d4d4"
        out.append(f'<line x1="{c}" y1="0" x2="{c}" y2="{s}" stroke="{colour}" stroke-width="1"/>')
        out.append(f'<line x1="0" y1="{c}" x2="{s}" y2="{c}" stroke="{colour}" stroke-width="1"/>')
    masks = []
    used: dict[tuple[int, int], int] = {}
    for b in boxes:
        if b.region.coords is None:
            masks.append(b)
            continue
        x0, y0, x1, y1 = (v * s for v in b.region.coords)
        colour = NOT_COLOUR if b.negated else PALETTE[b.index % len(PALETTE)]
        width = 4 if b.index == selected else 2
        dash = ' stroke-dasharray="6 4"' if b.negated else ""
        out.append(f'<g class="region" data-index="{b.index}">')
        out.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" fill="{colour}" '
                   f'fill-opacity="0.12" stroke="{colour}" stroke-width="{width}"{dash}/>')
        label = f"{b.index + 1}. {'NOT ' if b.negated else ''}{excerpt(b.concept, 28)}"
        corner = (round(x0), round(y0))
        shift = used.get(corner, 0)  # labels of boxes sharing a corner stack downwards
        used[corner] = shift + 1
        ty = min(y0 + 2 + 15 * shift, s - 15)
        tw = min(6.2 * len(label) + 6, s)  # about 6 px a character at 11 px
        tx = min(x0 + 2, s - tw)
        out.append(f'<rect class="label-bg" x="{tx:.1f}" y="{ty:.1f}" width="{tw:.1f}" height="14" fill="white" '
                   f'fill-opacity="0.8"/>')
        out.append(f'<text x="{tx + 3:.1f}" y="{ty + 11:.1f}" font-size="11" font-family="sans-serif" '
                   f'fill="{colour}">{_attr(label)}</text>')
        out.append("</g>")
    out.append('<rect class="rubber" x="0" y="0" width="0" height="0" fill="#000000" fill-opacity="0.08" '
               'stroke="#000000" stroke-width="1.5" stroke-dasharray="4 3" visibility="hidden"/>')
    out.append("</svg>")
    if masks:
        names = ", ".join(f"{b.index + 1}. mask:{b.region.name}" for b in masks)
        out.append(f'<div class="region-masks">not drawn: {_attr(names)}</div>')
    return "".join(out)
