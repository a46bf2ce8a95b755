"""An annotated sample grid (``compdiff sample --annotate``): what was asked, beside what came back.

The picture, top to bottom:

* a header: the expression exactly as asked, then one line naming the wanted concepts (AND) and the
  unwanted ones (NOT), then one line on where the images come from (model, seeds);
* on the left, for the ``objects`` task (whose concepts are positions), a "what was asked" panel per
  AND clause: the empty floor the world renders, with a green ring of radius ``RADIUS`` (where an
  object's center must lie) around each AND position and a red cross on each NOT position; for
  other tasks the header's text alone says what was asked;
* on the right, the samples: each tile is the sampled image, nearest-upscaled by an integer factor
  (``scale``: the plain grid's, ``max(1, min_cell // H)``), pixel for pixel; every drawing stays
  outside the tiles. The label under a tile gives its seed (and, with selection, whether the kept
  candidate satisfies the rule).

``annotate_grid`` returns the image and where each tile lies (``Annotated.tiles``), so a test can crop
the tiles back out. Pillow only; the font is PIL's own (``ImageFont.load_default``), so it works offline.
"""
from __future__ import annotations

import textwrap
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from compdiff.atomic import write_png

#: colours of the "what was asked" marks: an AND position, a NOT position
WANT_COLOR, AVOID_COLOR = "#1a9e1a", "#d62728"
_TEXT, _GREY, _BG = "#111111", "#666666", "white"
MARGIN, PAD, GAP = 10, 2, 18  # outer margin, space between tiles, space between panel and samples
MAX_PANELS = 4  # OR: at most this many clause panels (more: the header alone)


class Annotated(NamedTuple):
    image: Image.Image
    tiles: list[tuple[int, int, int, int]]  # tile i's box (x0, y0, x1, y1) in the image, x1/y1 exclusive
    scale: int  # each tile is its sample nearest-upscaled by this factor


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _text_w(font, text: str) -> int:
    return int(font.getlength(text)) if text else 0


def _line_h(font) -> int:
    return int(font.getbbox("Ag")[3]) + 3


def _wrap(font, text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` pixels (by characters of the font's average width)."""
    char_w = max(1.0, font.getlength("abcdefghij0123456789,.\" ") / 24)
    return textwrap.wrap(text, max(8, int(width / char_w)), break_long_words=True) or [""]


def _num(w: float) -> str:
    return f"{w:g}"


def term_summary(clauses: Sequence) -> str:
    """One line: the wanted and the unwanted concepts of each clause (``clauses``: ``Expr.clauses()``)."""
    parts = []
    for i, clause in enumerate(clauses):
        want = [t.concept + ("" if t.weight == 1 else f" (x{_num(t.weight)})") for t in clause.terms if t.weight > 0]
        avoid = [t.concept + ("" if t.weight == -1 else f" (x{_num(-t.weight)})") for t in clause.terms
                 if t.weight < 0]
        s = "wanted: " + (", ".join(want) or "-") + ("   not wanted: " + ", ".join(avoid) if avoid else "")
        parts.append(s if len(clauses) == 1 else f"clause {i + 1} (p = {clause.weight:.2f}) {s}")
    return "   |   ".join(parts)


def _positions(task: str | None, clauses: Sequence) -> list[tuple[list, list]] | None:
    """Per clause, (AND positions, NOT positions) as (x, y) for the objects task; None otherwise
    (another task, a concept that is not a position, or more clauses than panels)."""
    if task != "objects" or not clauses or len(clauses) > MAX_PANELS:
        return None
    from compdiff.errors import InputError
    from compdiff.world.tasks import get_task

    objects = get_task("objects")
    out = []
    for clause in clauses:
        want, avoid = [], []
        for t in clause.terms:
            try:
                p = objects.parse(t.concept)
            except InputError:
                return None
            if t.weight > 0:
                want.append((p.x, p.y))
            elif t.weight < 0:
                avoid.append((p.x, p.y))
        out.append((want, avoid))
    return out


def asked_panel(want: Sequence[tuple[float, float]], avoid: Sequence[tuple[float, float]],
                resolution: int, scale: int) -> Image.Image:
    """The empty floor of the objects world (``resolution`` pixels, nearest-upscaled ``scale`` times),
    a green ring around each wanted position (radius RADIUS: where an object's center must lie) and a
    red cross on each unwanted one."""
    from compdiff.world.render import render, to_uint8
    from compdiff.world.scene import Scene
    from compdiff.world.tasks.objects import RADIUS

    floor = to_uint8(render([Scene(())], resolution))[0]
    size = resolution * scale
    img = Image.fromarray(floor).resize((size, size), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    r = max(3.0, RADIUS * size)
    width = max(2, size // 64)
    for x, y in want:
        cx, cy = x * size, y * size
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=WANT_COLOR, width=width)
        draw.ellipse((cx - width, cy - width, cx + width, cy + width), fill=WANT_COLOR)
    a = 0.75 * r
    for x, y in avoid:
        cx, cy = x * size, y * size
        draw.line((cx - a, cy - a, cx + a, cy + a), fill=AVOID_COLOR, width=width + 1)
        draw.line((cx - a, cy + a, cx + a, cy - a), fill=AVOID_COLOR, width=width + 1)
    return img


def tile_labels(seeds: Sequence[int], records: Sequence[dict] | None = None) -> list[str]:
    """Under each tile: its seed; with selection (``records``: the --select records), how many
    candidates it was the best of, and "fails" when even the best breaks the keep rule."""
    labels = [f"seed {s}" for s in seeds]
    for i, rec in enumerate(records or ()):
        labels[i] += f", best of {rec.get('candidates', 1)}" + ("" if rec.get("satisfied") else " (fails)")
    return labels


def annotate_grid(images: np.ndarray, expression: str, clauses: Sequence = (), task: str | None = None,
                  labels: Sequence[str] | None = None, source: str = "", columns: int = 8,
                  min_cell: int = 128) -> Annotated:
    """images: (N, H, W, 3) uint8, the samples as written; expression: the text as asked; clauses: its
    ``Expr.clauses()`` (for the summary line and the objects panels); task: the model's world task
    (``"objects"`` draws the positions); labels[i]: the line under tile i; source: the header's last
    line (e.g. the model and seeds). See the module docstring for the picture."""
    n, h, w, _ = images.shape
    if n == 0:
        raise ValueError("annotate_grid needs at least one image")
    k = max(1, min_cell // h)
    tw, th = w * k, h * k
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    title, body, small = _font(16), _font(12), _font(11)
    panels = _positions(task, clauses)
    panel_w = 0 if panels is None else tw
    label_h = _line_h(small) + 2 if labels is not None else 0
    grid_w = cols * (tw + PAD) - PAD
    width = max(MARGIN * 2 + panel_w + (GAP if panel_w else 0) + grid_w, 360)
    text_w = width - 2 * MARGIN

    header: list[tuple[str, object, str]] = [(s, title, _TEXT) for s in _wrap(title, expression, text_w)]
    summary = term_summary(clauses) if clauses else ""
    header += [(s, body, _TEXT) for s in (_wrap(body, summary, text_w) if summary else [])]
    header += [(s, small, _GREY) for s in (_wrap(small, source, text_w) if source else [])]
    header_h = sum(_line_h(f) for _, f, _ in header) + 8

    caption_h = _line_h(body)
    icon = 14  # the legend's ring and cross, then the text beside them
    legend = [("ring: an object's center here (AND)", WANT_COLOR, "ring"),
              ("cross: no object here (NOT)", AVOID_COLOR, "cross")]
    legend_lines = [(s, c, mark if j == 0 else None) for text, c, mark in legend
                    for j, s in enumerate(_wrap(small, text, tw - icon))]
    panel_block = (caption_h + th + 4 + len(legend_lines) * _line_h(small) + 6) if panels else 0
    body_top = MARGIN + header_h
    grid_h = caption_h + rows * (th + label_h + PAD)
    height = body_top + max(grid_h, len(panels or ()) * panel_block) + MARGIN

    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    for s, f, c in header:
        draw.text((MARGIN, y), s, fill=c, font=f)
        y += _line_h(f)
    draw.line((MARGIN, body_top - 5, width - MARGIN, body_top - 5), fill="#cccccc", width=1)

    if panels:
        for i, (want, avoid) in enumerate(panels):
            y = body_top + i * panel_block
            cap = "what was asked" if len(panels) == 1 else f"asked, clause {i + 1}"
            draw.text((MARGIN, y), cap, fill=_TEXT, font=body)
            canvas.paste(asked_panel(want, avoid, h, k), (MARGIN, y + caption_h))
            y += caption_h + th + 4
            for s, c, mark in legend_lines:
                cy = y + _line_h(small) // 2
                if mark == "ring":
                    draw.ellipse((MARGIN + 1, cy - 4, MARGIN + 9, cy + 4), outline=c, width=2)
                elif mark == "cross":
                    draw.line((MARGIN + 1, cy - 4, MARGIN + 9, cy + 4), fill=c, width=2)
                    draw.line((MARGIN + 1, cy + 4, MARGIN + 9, cy - 4), fill=c, width=2)
                draw.text((MARGIN + icon, y), s, fill=c, font=small)
                y += _line_h(small)

    gx = MARGIN + panel_w + (GAP if panel_w else 0)
    draw.text((gx, body_top), f"{n} sample{'s' if n != 1 else ''}, as generated", fill=_TEXT, font=body)
    tiles = []
    for i in range(n):
        x0 = gx + (i % cols) * (tw + PAD)
        y0 = body_top + caption_h + (i // cols) * (th + label_h + PAD)
        tile = Image.fromarray(np.ascontiguousarray(images[i])).resize((tw, th), Image.NEAREST)
        canvas.paste(tile, (x0, y0))
        tiles.append((x0, y0, x0 + tw, y0 + th))
        if labels is not None:
            draw.text((x0, y0 + th + 1), _wrap(small, labels[i], tw)[0], fill=_GREY, font=small)
    return Annotated(canvas, tiles, k)


def write_annotated(images: np.ndarray, out, expression: str, **kwargs) -> Annotated:  # noqa: ANN001
    """:func:`annotate_grid`, written to ``out`` as PNG atomically; returns what was drawn."""
    a = annotate_grid(images, expression, **kwargs)
    write_png(a.image, out)
    return a
