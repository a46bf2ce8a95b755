"""The web app's logic, without Gradio: what each control of the page computes.

Everything here is plain Python over the library (parse, compose, the samplers, open_model),
so it is tested without a browser and without Gradio (tests/test_web.py). ``compdiff.web.app``
only lays these functions out as a page.

* :func:`analyze`: the live parse display (tree, effective weights, or the error with its
  column marked), the slider rows and the canvas markers of an expression. Never raises.
* :func:`leaf_weights` / :func:`set_leaf_weight`: one slider per concept leaf, holding that
  leaf's own ``:w``; moving a slider rewrites the expression (in its canonical text).
* :func:`click_to_concept` / :func:`add_concept`: a click on the canvas -> ``"x,y"`` -> the
  expression gains ``AND "x,y"`` (or ``AND NOT "x,y"``).
* :func:`drag_to_box` / :func:`set_leaf_region`: a box dragged on the regions canvas ->
  ``Region.box`` (3 decimals) -> the chosen concept leaf gets ``@ (x0, y0, x1, y1)``, replacing
  its region; :func:`region_boxes` / :func:`regions_svg`: the expression's regions drawn as
  labelled rectangles. The expression text stays the only state: regions typed by hand show too.
* :class:`ModelStore`: the models named when the server started, each opened ONCE (cached),
  with one lock per model so that one job at a time runs on it. The page names models only by
  these names: no path from the page ever reaches ``open_model``.
* :func:`generate`: one generation, step for step what ``compdiff sample`` does (same seeds,
  same images), with a per-step progress callback and a stop check.
* :func:`reproduce_command`: the ``compdiff sample ...`` line that writes the same images.
"""
from __future__ import annotations

import math
import re
import shlex
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from compdiff.errors import InputError, ParseError
from compdiff.expr import And, Concept, Expr, Not, Or, parse, quote
from compdiff.expr.display import escape, excerpt
from compdiff.expr.region import Region

#: the corrector choice meaning "no corrector"
CORRECTOR_OFF = "off"
#: display size of the objects canvas (pixels); the world is 32x32
CANVAS_PX = 256
#: display size of the regions canvas (pixels): a square standing for the image, whatever its size
REGION_PX = 256
#: largest feather the page's slider offers (a fraction of the image; the library accepts up to 1)
MAX_FEATHER = 0.25
#: a box dragged on the regions canvas must be at least this wide and tall (a fraction of the image)
MIN_BOX = 0.01
#: how overlapping regions combine (``compose(region_mode=...)``, ``--region-mode``)
REGION_MODES = ("sum", "normalize")
#: generated images are shown (and downloaded) nearest-upscaled to at least this many pixels,
#: like the tiles of ``compdiff sample``'s grid
MIN_CELL = 128
#: guidance scales the page accepts (the CLI accepts |s| <= 100 too)
MAX_SCALE = 100.0
#: largest seed: image i uses seed + i, which torch takes below 2**63
MAX_SEED = 2**63 - 1
#: an example expression per world task, shown when its model is chosen
EXAMPLES = {
    "objects": '"0.30,0.30" AND "0.70,0.70" AND NOT "0.70,0.30"',
    "relations": '"a red cube left of a blue sphere"',
    "attributes": "red AND cube AND NOT metal",
}
GENERIC_EXAMPLE = '"a stone castle" AND NOT "black and white"'


class Cancelled(Exception):
    """Raised inside a generation when its stop check says stop."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is a ``compdiff serve`` flag."""

    max_n: int = 16
    max_steps: int = 200
    max_concepts: int = 16
    max_length: int = 2000
    #: most jobs waiting in the queue (``demo.queue(max_size=...)``); more get "busy, try again"
    queue_size: int = 8

    def __post_init__(self) -> None:
        for name in ("max_n", "max_steps", "max_concepts", "max_length", "queue_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name.replace('_', '-')} must be an integer >= 1, got {v!r}")


# --------------------------------------------------------------------------
# expressions: checking, the live display, sliders


def check_length(text: str, limits: Limits) -> None:
    if not isinstance(text, str):
        raise InputError("the expression must be text")
    if len(text) > limits.max_length:
        raise InputError(f"the expression is {len(text)} characters long; this server accepts at most "
                         f"{limits.max_length}")


_NO_MASK = re.compile(r"^(no mask named .* at column \d+): [^\n]*")


def parse_limited(text: str, limits: Limits) -> Expr:
    """``parse`` under the server's limits (length, number of concepts); InputError otherwise.
    The page takes no mask images, so a ``mask:NAME`` region is a ParseError at its '@'."""
    check_length(text, limits)
    try:
        return parse(text, max_concepts=limits.max_concepts, masks=())
    except ParseError as err:
        message = str(err)
        if _NO_MASK.match(message):  # the parser's hint names the CLI's --mask; say what works here
            raise ParseError(_NO_MASK.sub(r"\1: this page takes no mask images; drag a box on the regions "
                                          "canvas, or write a box (x0, y0, x1, y1) or a named region such "
                                          "as left", message, count=1)) from None
        raise


@dataclass(frozen=True)
class Leaf:
    """One concept leaf of the tree, left to right: its text, its own ``:w``, whether it
    counts against the image (an odd number of NOTs above it, or a negative product of weights)
    and its region (None: the whole image)."""

    concept: str
    weight: float
    negated: bool
    region: Region | None = None


def leaves(expr: Expr) -> list[Leaf]:
    """The concept leaves of ``expr`` in text order (the order the sliders show)."""
    out: list[Leaf] = []

    def walk(e: Expr, sign: float) -> None:
        if isinstance(e, Concept):
            out.append(Leaf(e.text, e.weight, sign * e.weight < 0, e.region))
        elif isinstance(e, Not):
            walk(e.child, -sign)
        else:  # And / Or: a negative group weight flips its children
            for c in e.children:
                walk(c, -sign if e.weight < 0 else sign)

    walk(expr, 1.0)
    return out


def leaf_weights(text: str, limits: Limits) -> list[Leaf]:
    """The slider rows of ``text``: one per concept leaf ([] when it does not parse)."""
    try:
        return leaves(parse_limited(text, limits))
    except InputError:
        return []


def _replace_leaf(e: Expr, index: int, change: Callable[[Concept], Concept], counter: list[int]) -> Expr:
    """``e`` with concept leaf ``index`` (text order, as :func:`leaves`) replaced by ``change(leaf)``."""
    if isinstance(e, Concept):
        i = counter[0]
        counter[0] += 1
        return change(e) if i == index else e
    if isinstance(e, Not):
        return Not(_replace_leaf(e.child, index, change, counter))
    assert isinstance(e, (And, Or))
    return type(e)(tuple(_replace_leaf(c, index, change, counter) for c in e.children), e.weight)


def _box_text(values: Sequence[float]) -> str | None:
    """A box's coordinates with 3 decimals (``0.100, 0.250, 0.500, 0.900``) when 3 decimals
    hold them exactly (boxes drawn on the canvas always), else None."""
    if len(values) != 4 or any(round(v, 3) != v for v in values):
        return None
    return ", ".join(f"{v + 0.0:.3f}" for v in values)


def region_text(region: Region | None) -> str:
    """A region as the expression writes it: ``left``, ``(0.100, 0.200, 0.500, 0.900)``, ``mask:face``
    ("" for None). Boxes get 3 decimals where that is exact, else their canonical form."""
    if region is None:
        return ""
    if region.kind == "box":
        body = _box_text(region.coords)  # type: ignore[arg-type]
        if body is not None:
            return f"({body})"
    return str(region)


#: a quoted concept (skipped) or a region box, in canonical text
_CANONICAL_BOX = re.compile(r'"(?:[^"\\]|\\.)*"|@ \(([^()"]*)\)')


def canonical(expr: Expr) -> str:
    """``str(expr)`` (the canonical text the sliders and boxes write back), with each region box
    in 3 decimals where that is exact, as boxes are drawn: it parses back to the same tree."""
    def fix(m: re.Match) -> str:
        if m.group(1) is None:  # quoted concept text: as it is
            return m.group(0)
        try:
            body = _box_text([float(v) for v in m.group(1).split(",")])
        except ValueError:
            body = None
        return m.group(0) if body is None else f"@ ({body})"

    return _CANONICAL_BOX.sub(fix, str(expr))


def set_leaf_weight(text: str, index: int, weight: float, limits: Limits) -> str:
    """``text`` with concept leaf ``index``'s own weight set to ``weight`` (rounded to 3
    decimals), written back as the expression's canonical text. Text that does not parse, or an
    index out of range, comes back unchanged."""
    try:
        expr = parse_limited(text, limits)
        w = round(float(weight), 3) + 0.0
        if not 0 <= int(index) < len(leaves(expr)) or not math.isfinite(w):
            return text
        return canonical(_replace_leaf(expr, int(index), lambda c: replace(c, weight=w), [0]))
    except (InputError, TypeError, ValueError):
        return text


def set_leaf_region(text: str, index: int, region: Region | None, limits: Limits) -> str:
    """``text`` with concept leaf ``index``'s region set to ``region`` (None: removed), replacing
    the region it had, written back as canonical text (:func:`canonical`). InputError, with a
    message for the page, when ``text`` does not parse or has no leaf ``index``."""
    expr = parse_limited(text, limits)
    n = len(leaves(expr))
    if isinstance(index, bool) or not isinstance(index, (int, float)) or not 0 <= index < n or index != int(index):
        if n == 0:
            raise InputError("type a concept first")
        raise InputError(f"choose one of the {n} concept{'s' if n != 1 else ''} for the region, "
                         f"got {excerpt(repr(index), 40)}")
    return canonical(_replace_leaf(expr, int(index), lambda c: replace(c, region=region), [0]))


def _num(x: float) -> str:
    s = f"{x:.4g}"
    return s if any(c in s for c in ".en") else s + ".0"


def format_clause(terms: Sequence[Any]) -> str:
    """An AND clause's terms as expression text: ``"a" @ left AND NOT "b":0.5``."""
    parts = []
    for t in terms:
        w = abs(t.weight)
        region = getattr(t, "region", None)
        body = quote(t.concept) + ("" if w == 1.0 else ":" + _num(w)) + (f" @ {region_text(region)}" if region else "")
        parts.append(("NOT " if t.weight < 0 else "") + body)
    return " AND ".join(parts) if parts else "(no concept)"


def _md_escape(text: str) -> str:
    """User text inside Markdown table cells and prose: escaped, no markup."""
    text = escape(text)
    return re.sub(r"([\\`*_{}\[\]<>()#+\-!|~$])", r"\\\1", text)


def _code_block(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"


def error_markdown(err: BaseException, title: str = "Error") -> str:
    """A message for the page: the first line in bold, the caret window (if any) as code."""
    lines = str(err).rstrip().split("\n")
    head = _md_escape(lines[0]) if lines and lines[0] else type(err).__name__
    out = f"**{title}:** {head}"
    if len(lines) > 1:
        out += "\n\n" + _code_block("\n".join(lines[1:]))
    return out


def error_column(err: BaseException) -> int | None:
    """The 1-based column a ParseError names (``... at column 9: ...``), if any."""
    m = re.search(r"at column (\d+)", str(err).split("\n")[0])
    return int(m.group(1)) if m else None


@dataclass
class Analysis:
    """What the page shows for an expression: ``ok``, the Markdown, the slider rows, the
    canvas markers ((x, y, negative) for each position concept), the parsed tree and the
    regions to draw (:func:`region_boxes`)."""

    ok: bool
    markdown: str
    leaves: list[Leaf] = field(default_factory=list)
    markers: list[tuple[float, float, bool]] = field(default_factory=list)
    expr: Expr | None = None
    column: int | None = None
    regions: list["RegionBox"] = field(default_factory=list)


def check_concepts(expr: Expr, task: str | None) -> None:
    """Each concept read by the world task (InputError naming the bad one); nothing for other models."""
    if task is None:
        return
    from compdiff.world.tasks import get_task

    try:
        t = get_task(task)
    except InputError:
        return
    seen = set()
    for leaf in leaves(expr):
        if leaf.concept in seen:
            continue
        seen.add(leaf.concept)
        try:
            t.parse(leaf.concept)
        except InputError as err:
            raise type(err)(f"concept {excerpt(quote(leaf.concept), 60)} is not a {task} concept: {err}") from None


def analyze(text: str, limits: Limits, *, task: str | None = None, guidance_scale: float = 1.0,
            mode: str = "sum") -> Analysis:
    """The live display of ``text``: the tree and one table of effective weights per clause
    (pi for OR), or the parse error with its column. Never raises."""
    from compdiff.compose import effective_weights

    try:
        scale = float(guidance_scale)
        if not math.isfinite(scale):
            scale = 1.0
    except (TypeError, ValueError):
        scale = 1.0
    mode = mode if mode in ("sum", "mean") else "sum"
    try:
        expr = parse_limited(text, limits)
    except InputError as err:
        col = error_column(err)
        return Analysis(False, error_markdown(err, "Parse error"), column=col)
    rows = leaves(expr)
    markers = _markers(rows) if task == "objects" else []
    boxes = region_boxes(rows)
    try:
        check_concepts(expr, task)
        clauses = expr.clauses()
    except InputError as err:
        return Analysis(False, error_markdown(err, "Error"), rows, markers, expr, regions=boxes)
    rule = "w·s" if mode == "sum" else "w·s/P"
    parts = [f"**Parsed** ({len(rows)} concept{'s' if len(rows) != 1 else ''}), canonical text and tree:",
             _code_block(escape(canonical(expr)) + "\n\n" + expr.pretty())]
    for i, clause in enumerate(clauses):
        if len(clauses) > 1:
            parts.append(f"clause {i + 1} of {len(clauses)}, pi = {clause.weight:.4g}:")
        eff = effective_weights(list(clause.terms), scale, mode)
        if any(t.region is not None for t in clause.terms):  # a region column only where there are regions
            table = [f"| concept | region | weight | effective ({rule}, s = {_num(scale)}) |", "|---|---|---:|---:|"]
            table += [f"| {_md_escape(quote(t.concept))} | {_md_escape(region_text(t.region) or 'whole image')} | "
                      f"{_num(t.weight)} | {_num(e)} |" for t, e in zip(clause.terms, eff)]
        else:
            table = [f"| concept | weight | effective ({rule}, s = {_num(scale)}) |", "|---|---:|---:|"]
            table += [f"| {_md_escape(quote(t.concept))} | {_num(t.weight)} | {_num(e)} |"
                      for t, e in zip(clause.terms, eff)]
        parts.append("\n".join(table))
    if len(clauses) > 1:
        parts.append("OR is a mixture: each image follows one clause, drawn with probability pi.")
    if boxes:
        parts.append("A concept with a region guides only inside it (box: x0, y0, x1, y1, fractions of the "
                     "image, origin top left).")
    return Analysis(True, "\n\n".join(parts), rows, markers, expr, regions=boxes)


def _markers(rows: list[Leaf]) -> list[tuple[float, float, bool]]:
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
# the canvas (objects task)


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
    """The leaves (:func:`leaves`) that have a region, as boxes to draw."""
    return [RegionBox(i, leaf.concept, leaf.negated, leaf.region) for i, leaf in enumerate(rows)
            if leaf.region is not None]


def leaf_label(i: int, leaf: Leaf, width: int = 48) -> str:
    """``3. NOT a red cube @ left``: a leaf as the sliders and the region chooser name it."""
    region = f" @ {region_text(leaf.region)}" if leaf.region is not None else ""
    return f"{i + 1}. {'NOT ' if leaf.negated else ''}{excerpt(leaf.concept, width)}{region}"


def concept_choices(rows: Sequence[Leaf]) -> list[tuple[str, int]]:
    """The region chooser's entries: (label, leaf index)."""
    return [(leaf_label(i, leaf), i) for i, leaf in enumerate(rows)]


#: one outline colour per concept leaf (cycled); NOT is always red and dashed
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f")
NOT_COLOUR = "#d62728"


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


# --------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class ModelEntry:
    """A model the server serves: its page name, what ``open_model`` gets, and the
    ``compdiff sample`` options that name it (``--task objects`` or ``--model DIR``)."""

    name: str
    source: str
    cli: tuple[str, ...]


class ModelStore:
    """The models named at start; each opened once (on first use, or all by :meth:`load_all`)
    and kept. ``lock(name)``: one job at a time per model."""

    def __init__(self, models: Sequence[str] = (), *, shipped: bool = True, device: Any = "cpu",
                 device_flag: str | None = None, opener: Callable[..., Any] | None = None) -> None:
        import torch

        from compdiff.models import shipped_models

        self.device = torch.device(device)
        #: ``--device`` for the reproduce command (None: the CLI's auto picks the same)
        self.device_flag = device_flag
        self._opener = opener
        self.entries: dict[str, ModelEntry] = {}
        have = shipped_models()
        if shipped:
            from compdiff.world.tasks import task_names

            order = {t: i for i, t in enumerate(task_names())}
            for task in sorted(have, key=lambda t: (order.get(t, len(order)), t)):
                self.entries[task] = ModelEntry(task, task, ("--task", task))
        for spec in models:
            spec = str(spec)
            if spec in have and not Path(spec).expanduser().exists():
                if spec not in self.entries:
                    self.entries[spec] = ModelEntry(spec, spec, ("--task", spec))
                continue
            path = Path(spec).expanduser()
            if not path.is_dir():
                raise InputError(f"--model {excerpt(spec, 100)}: neither a shipped model ({', '.join(have)}) "
                                 "nor a model directory")
            path = path.resolve()
            base = path.name or "model"
            name, k = base, 2
            while name in self.entries:
                name, k = f"{base}-{k}", k + 1
            self.entries[name] = ModelEntry(name, str(path), ("--model", str(path)))
        if not self.entries:
            raise InputError("no model to serve: name one with --model")
        self._opened: dict[str, Any] = {}
        self._locks = {name: threading.Lock() for name in self.entries}
        self._open_lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self.entries)

    def entry(self, name: str) -> ModelEntry:
        if not isinstance(name, str) or name not in self.entries:
            raise InputError(f"unknown model {excerpt(repr(name), 60)}; this server serves: "
                             f"{', '.join(self.entries)}")
        return self.entries[name]

    def get(self, name: str):
        """The OpenedModel called ``name``, opened on first use and then kept."""
        entry = self.entry(name)
        with self._open_lock:
            if name not in self._opened:
                opener = self._opener
                if opener is None:
                    from compdiff.backends import open_model as opener
                self._opened[name] = opener(entry.source, device=self.device)
            return self._opened[name]

    def is_open(self, name: str) -> bool:
        return name in self._opened

    def load_all(self) -> None:
        for name in self.entries:
            self.get(name)

    def lock(self, name: str) -> threading.Lock:
        self.entry(name)
        return self._locks[name]

    def task(self, name: str) -> str | None:
        return getattr(self.get(name), "task", None)

    def defaults(self, name: str, limits: Limits) -> dict[str, Any]:
        """The page's settings for model ``name``: its recommended sampler and steps (capped by
        the limits), its guidance scale, its task and an example expression."""
        m = self.get(name)
        steps = int(m.sampling.get("steps", 50))
        return {"sampler": m.sampling.get("sampler", "ddim"), "steps": max(1, min(steps, limits.max_steps)),
                "guidance_scale": float(m.default_scale), "task": m.task,
                "example": EXAMPLES.get(m.task or "", GENERIC_EXAMPLE)}


# --------------------------------------------------------------------------
# one generation


@dataclass(frozen=True)
class Settings:
    """One Generate click. ``sampler``/``steps``/``guidance_scale`` None: the model's own."""

    model: str
    expr: str
    n: int = 4
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    corrector: str = CORRECTOR_OFF
    negation: str = "plain"
    mode: str = "sum"
    #: regions' soft edge, a fraction of the image (``compose(feather=...)``, ``--feather``)
    feather: float = 0.0
    #: where regions overlap: "sum" or "normalize" (``--region-mode``)
    region_mode: str = "sum"


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, got {excerpt(repr(value), 40)}") from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"{what} must be a whole number, got {excerpt(repr(value), 40)}")
    return int(f)


@dataclass(frozen=True)
class Checked:
    """Settings after :func:`check_settings`: every value resolved and in range."""

    settings: Settings
    expr: Expr
    sampler: str
    steps: int
    guidance_scale: float
    corrector: Any  # Corrector | None
    feather: float = 0.0
    #: whether some concept of the expression has a region
    has_regions: bool = False


def check_settings(s: Settings, store: ModelStore, limits: Limits) -> Checked:
    """Every setting checked against the limits and resolved against the model's defaults;
    InputError with a message for the page otherwise. Opens (or reuses) the model."""
    from compdiff.compose import check_options, effective_weights
    from compdiff.correctors import KERNELS, Corrector
    from compdiff.sampling import SAMPLERS

    store.entry(s.model)
    n = _int(s.n, "n")
    if not 1 <= n <= limits.max_n:
        raise InputError(f"n must lie in 1..{limits.max_n} on this server, got {n}")
    seed = _int(s.seed, "seed")
    if not 0 <= seed or seed + n - 1 > MAX_SEED:
        raise InputError(f"seed must lie in 0..{MAX_SEED - n + 1} (image i uses seed + i), got {seed}")
    steps = None if s.steps is None else _int(s.steps, "steps")
    if steps is not None and not 1 <= steps <= limits.max_steps:
        raise InputError(f"steps must lie in 1..{limits.max_steps} on this server, got {steps}")
    if s.sampler is not None and (not isinstance(s.sampler, str) or s.sampler not in SAMPLERS):
        raise InputError(f"unknown sampler {excerpt(repr(s.sampler), 40)}; accepted: {', '.join(SAMPLERS)}")
    if s.corrector != CORRECTOR_OFF and (not isinstance(s.corrector, str) or s.corrector not in KERNELS):
        raise InputError(f"unknown corrector {excerpt(repr(s.corrector), 40)}; accepted: "
                         f"{', '.join((CORRECTOR_OFF, *KERNELS))}")
    if s.mode not in ("sum", "mean"):
        raise InputError(f"mode must be sum or mean, got {excerpt(repr(s.mode), 40)}")
    if s.region_mode not in REGION_MODES:
        raise InputError(f"region mode must be sum or normalize, got {excerpt(repr(s.region_mode), 40)}")
    try:
        feather = float(s.feather)
    except (TypeError, ValueError):
        feather = float("nan")
    if isinstance(s.feather, bool) or not (math.isfinite(feather) and 0.0 <= feather <= 1.0):
        raise InputError(f"feather must be a number in [0, 1] (a fraction of the image), "
                         f"got {excerpt(repr(s.feather), 40)}")
    check_options(0.0, None, s.negation)
    if s.guidance_scale is not None:
        try:
            scale = float(s.guidance_scale)
        except (TypeError, ValueError):
            shown = excerpt(repr(s.guidance_scale), 40)
            raise InputError(f"the guidance scale must be a number, got {shown}") from None
        if not (math.isfinite(scale) and abs(scale) <= MAX_SCALE):
            raise InputError(f"the guidance scale must lie in [-{MAX_SCALE:g}, {MAX_SCALE:g}], got {scale}")
    expr = parse_limited(s.expr, limits)
    clauses = expr.clauses()
    m = store.get(s.model)
    check_concepts(expr, m.task)
    scale = float(m.default_scale) if s.guidance_scale is None else float(s.guidance_scale)
    for clause in clauses:
        if not all(math.isfinite(e) for e in effective_weights(list(clause.terms), scale, s.mode)):
            raise InputError(f"the effective weights (weight x guidance scale {scale:g}) overflow; "
                             "use smaller weights")
    sampler = s.sampler or m.sampling.get("sampler", "ddim")
    if steps is None:
        steps = min(int(m.sampling.get("steps", 50)), limits.max_steps)
    try:
        m.schedule.timesteps(steps, "trailing")
    except ValueError as err:
        raise InputError(f"steps: {err}") from None
    corrector = None if s.corrector == CORRECTOR_OFF else Corrector(s.corrector)
    s = replace(s, n=n, seed=seed, steps=steps, sampler=sampler, guidance_scale=scale, feather=feather)
    has_regions = any(leaf.region is not None for leaf in leaves(expr))
    return Checked(s, expr, sampler, steps, scale, corrector, feather, has_regions)


@dataclass
class Generation:
    """The images (uint8 (H, W, 3), upscaled like the CLI grid's tiles), their seeds, the clause
    each followed (None without OR), captions, and the reproducing command."""

    images: list[Any]
    seeds: list[int]
    clauses: list[int | None]
    captions: list[str]
    command: str
    raw: Any = None  # (n, h, w, 3) uint8 at the model's resolution


def to_uint8(images):
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8 numpy, as ``compdiff sample`` quantises."""
    import torch

    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8) \
        .permute(0, 2, 3, 1).numpy()


def upscale(u8, min_cell: int = MIN_CELL):
    """(H, W, 3) uint8 -> nearest-upscaled by k = max(1, min_cell // H), as the CLI grid's tiles."""
    import numpy as np

    k = max(1, min_cell // u8.shape[0])
    return np.ascontiguousarray(u8.repeat(k, axis=0).repeat(k, axis=1)) if k > 1 else u8


def generate(s: Settings, store: ModelStore, limits: Limits, *,
             progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Generation:
    """One generation: what ``compdiff sample`` does for the same settings (same seeds, same
    clause draws, same sampler call), so the images are the CLI's. ``progress(done, total)``
    after each step; ``should_stop()`` checked at each step (True: :class:`Cancelled`)."""
    import torch

    from compdiff.cli.sample import sampler_kwargs
    from compdiff.compose import compose
    from compdiff.sampling import generators, get_sampler, randn

    c = check_settings(s, store, limits)
    s = c.settings
    with store.lock(s.model):
        m = store.get(s.model)
        ts = m.schedule.timesteps(c.steps, "trailing")
        total = len(ts)
        done = [0]

        def callback(info) -> None:
            done[0] += 1
            if should_stop is not None and should_stop():
                raise Cancelled()
            if progress is not None:
                progress(done[0], total)

        if should_stop is not None and should_stop():
            raise Cancelled()
        if progress is not None:
            progress(0, total)
        with torch.no_grad():
            eps_fn = compose(m.denoiser, m.encoder, c.expr, guidance_scale=c.guidance_scale, mode=s.mode,
                             negation=s.negation, feather=c.feather, region_mode=s.region_mode)
            seeds = [s.seed + i for i in range(s.n)]
            gens = generators(seeds)
            assignment = eps_fn.draw_clauses(s.n, gens)  # OR: each image draws its clause, from its seed
            fn = eps_fn.with_clauses(assignment)
            x_T = randn((s.n, *m.latent_shape), gens, device=store.device)
            x0 = get_sampler(c.sampler)(fn, x_T, m.schedule, ts, generator=gens, callback=callback,
                                        clip_x0=m.clip_x0, corrector=c.corrector, **sampler_kwargs(c.sampler, 0.0))
            raw = to_uint8(m.decode(x0))
    clauses = eps_fn.clauses
    which: list[int | None] = [int(a) for a in assignment.tolist()] if len(clauses) > 1 else [None] * s.n
    captions = []
    for seed, k in zip(seeds, which):
        cap = f"seed {seed}"
        if k is not None:
            cap += f" · clause {k + 1}: {excerpt(format_clause(clauses[k].terms), 80)}"
        captions.append(cap)
    return Generation([upscale(im) for im in raw], seeds, which, captions, reproduce_command(c, store), raw)


def reproduce_command(c: Checked, store: ModelStore) -> str:
    """The ``compdiff sample`` line that writes the same images (as a grid) as the checked
    settings ``c`` (from :func:`check_settings`): every setting spelled out, none left to defaults
    (feather and region mode only where the expression has a region: elsewhere they change nothing)."""
    s = c.settings
    args = ["compdiff", "sample", s.expr.strip(), *store.entry(s.model).cli, "--n", str(s.n), "--seed", str(s.seed),
            "--sampler", c.sampler, "--steps", str(c.steps), "--guidance-scale", repr(float(c.guidance_scale))]
    if s.mode != "sum":
        args += ["--mode", s.mode]
    if s.negation != "plain":
        args += ["--negation", s.negation]
    if c.corrector is not None:
        args += ["--correct", c.corrector.kind]
    if c.has_regions and c.feather != 0.0:
        args += ["--feather", repr(c.feather)]
    if c.has_regions and s.region_mode != "sum":
        args += ["--region-mode", s.region_mode]
    if store.device_flag:
        args += ["--device", store.device_flag]
    args += ["--out", "composed.png"]
    return " ".join(shlex.quote(a) for a in args)
