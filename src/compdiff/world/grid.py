"""Labelled image grids (PIL): nearest-neighbour upscaled tiles, text under each."""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


#: outline colours of the boxes drawn on tiles, one per box index (matplotlib's first four)
BOX_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def make_grid(images: np.ndarray, labels: Sequence[Sequence[str]], columns: int = 8,
              scale: int = 4, pad: int = 4, boxes: Sequence[Sequence[Sequence[float]]] | None = None,
              boxed_lines: int = 0) -> Image.Image:
    """images: (N, H, W, 3) uint8; labels[i]: text lines under tile i.

    boxes[i] (optional): boxes (x0, y0, x1, y1) in fractions of the tile, origin top left, drawn
    as outlines in BOX_COLORS[j] for box j; label line boxed_lines + j is written in the same
    colour, so a reader matches each box with its concept."""
    n, h, w, _ = images.shape
    font = ImageFont.load_default()
    tw, th = w * scale, h * scale
    char_w = max(1, int(font.getlength("m")))
    line_h = int(font.getbbox("Ag")[3]) + 2
    # per tile, per label line, its wrapped parts
    wrapped = [[textwrap.wrap(line, max(8, tw // char_w)) or [""] for line in lab] for lab in labels]
    n_lines = max([sum(map(len, x)) for x in wrapped] + [0])
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    cell_w, cell_h = tw + pad, th + pad + n_lines * line_h + pad
    canvas = Image.new("RGB", (cols * cell_w + pad, rows * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x0 = pad + (i % cols) * cell_w
        y0 = pad + (i // cols) * cell_h
        tile = Image.fromarray(images[i]).resize((tw, th), Image.NEAREST)
        canvas.paste(tile, (x0, y0))
        tile_boxes = boxes[i] if boxes is not None else ()
        for j, (bx0, by0, bx1, by1) in enumerate(tile_boxes):
            color = BOX_COLORS[j % len(BOX_COLORS)]
            draw.rectangle((x0 + round(bx0 * tw), y0 + round(by0 * th),
                            x0 + max(round(bx0 * tw), round(bx1 * tw) - 1),
                            y0 + max(round(by0 * th), round(by1 * th) - 1)), outline=color, width=1)
        line_colors = {boxed_lines + j: BOX_COLORS[j % len(BOX_COLORS)] for j in range(len(tile_boxes))}
        row = 0
        for j, parts in enumerate(wrapped[i]):
            for part in parts:
                draw.text((x0, y0 + th + 2 + row * line_h), part, fill=line_colors.get(j, "black"), font=font)
                row += 1
    return canvas
