"""Labelled grids: tiles, wrapped labels, and region boxes drawn in their concept's colour."""
import numpy as np
from PIL import ImageColor

from compdiff.world.grid import BOX_COLORS, make_grid

GREY = 100


def tiles(n=2, size=8):
    return np.full((n, size, size, 3), GREY, dtype=np.uint8)


def test_boxes_are_outlined_in_their_colour_on_their_tile():
    scale, pad = 4, 4
    grid = np.asarray(make_grid(tiles(), [["OK", "a"], ["miss", "b"]], columns=2, scale=scale, pad=pad,
                                boxes=[[(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)], []], boxed_lines=1))
    first, second = (ImageColor.getrgb(c) for c in BOX_COLORS[:2])
    tw = 8 * scale
    # tile 0 starts at (pad, pad): box 0's top-left corner and the inside of its top edge
    assert tuple(grid[pad, pad]) == first and tuple(grid[pad, pad + 10]) == first
    # its right edge is the last pixel column inside the box (x1 = 0.5 -> column 15 of the tile)
    assert tuple(grid[pad + 5, pad + tw // 2 - 1]) == first and tuple(grid[pad + 5, pad + tw // 2]) != first
    assert tuple(grid[pad + tw - 1, pad + tw - 1]) == second  # box 1 ends at the tile's corner
    assert tuple(grid[pad + 5, pad + 5]) == (GREY,) * 3  # the inside is untouched
    # tile 1 has no boxes: all its pixels are the tile
    x1 = pad + tw + pad
    assert (grid[pad:pad + tw, x1:x1 + tw] == GREY).all()


def test_label_lines_of_boxed_concepts_take_the_box_colour():
    labels = [["OK", "a red cube", "NOT x"]]  # 32-pixel tiles at scale 4: no line wraps

    def grid(**kw):
        return np.asarray(make_grid(tiles(1, size=32), labels, **kw)).astype(int)

    def coloured_rows(g):
        text = g[4 + 128:]  # below the tile; black text is antialiased in greys
        return sorted(set(np.nonzero((text.max(2) - text.min(2)) > 30)[0]))

    boxed = coloured_rows(grid(boxes=[[(0.0, 0.0, 1.0, 1.0)]], boxed_lines=1))
    assert coloured_rows(grid()) == []
    # only the second label line is coloured. The grid is pad + tile + pad + 3 lines + pad tall,
    # and the text starts 2 pixels below the tile (row 2 here)
    line_h = (grid().shape[0] - 4 - 128 - 4 - 4) // 3
    assert boxed and 2 + line_h <= min(boxed) and max(boxed) < 2 + 2 * line_h


def test_no_boxes_is_the_plain_grid():
    labels = [["OK", "a long label that wraps onto more than one line of the tile"], ["miss"]]
    plain = np.asarray(make_grid(tiles(), labels))
    assert np.array_equal(plain, np.asarray(make_grid(tiles(), labels, boxes=[[], []])))
    # the label wraps: the grid is taller than one label line per tile would make it
    one_line = np.asarray(make_grid(tiles(), [["OK"], ["miss"]]))
    assert plain.shape[0] > one_line.shape[0]
