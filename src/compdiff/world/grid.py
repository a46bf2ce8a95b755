"""Labelled image grids (PIL): nearest-neighbour upscaled tiles, text under each."""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def make_grid(images: np.ndarray, labels: Sequence[Sequence[str]], columns: int = 8,
              scale: int = 4, pad: int = 4) -> Image.Image:
    """images: (N, H, W, 3) uint8; labels[i]: text lines under tile i."""
    n, h, w, _ = images.shape
    font = ImageFont.load_default()
    tw, th = w * scale, h * scale
    char_w = max(1, int(font.getlength("m")))
    line_h = int(font.getbbox("Ag")[3]) + 2
    wrapped = [[part for line in lab for part in (textwrap.wrap(line, max(8, tw // char_w))
                                                   or [""])] for lab in labels]
    n_lines = max([len(x) for x in wrapped] + [0])
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
        for j, line in enumerate(wrapped[i]):
            draw.text((x0, y0 + th + 2 + j * line_h), line, fill="black", font=font)
    return canvas
