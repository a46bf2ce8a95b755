"""compdiff sample --annotate and compdiff.world.annotate: the header, the 'what was asked' panel,
and tiles that are the exact samples (2-step samples of the tiny model)."""
import json

import numpy as np
import pytest
from PIL import Image, ImageColor

from compdiff.cli import main
from compdiff.expr import parse
from compdiff.world.annotate import AVOID_COLOR, WANT_COLOR, annotate_grid, tile_labels

EXPR = '"0.3,0.3" AND "0.7,0.7" AND NOT "0.7,0.3"'


def _rgb(img) -> np.ndarray:
    return np.asarray(Image.open(img).convert("RGB") if not isinstance(img, Image.Image) else img.convert("RGB"))


def _find(canvas: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Every (x, y) where ``tile`` appears in ``canvas`` pixel for pixel."""
    th, tw, _ = tile.shape
    H, W, _ = canvas.shape
    if H < th or W < tw:
        return []
    top = (canvas[:H - th + 1, :W - tw + 1] == tile[0, 0]).all(-1)
    bottom = (canvas[th - 1:, tw - 1:] == tile[-1, -1]).all(-1)
    return [(int(x), int(y)) for y, x in zip(*np.nonzero(top & bottom))
            if np.array_equal(canvas[y:y + th, x:x + tw], tile)]


def _mask(canvas: np.ndarray, color: str) -> np.ndarray:
    return (canvas == np.array(ImageColor.getrgb(color), np.uint8)).all(-1)


def test_annotated_tiles_equal_the_plain_samples(tiny_model, tmp_path, capsys):
    common = [EXPR, "--model", tiny_model, "--n", "3", "--steps", "2", "--seed", "5", "--no-progress"]
    assert main(["sample", *common, "--annotate", "--out", str(tmp_path / "a.png")]) == 0
    assert main(["sample", *common, "--out-dir", str(tmp_path / "plain")]) == 0
    plain = sorted((tmp_path / "plain").glob("*.png"))
    assert [p.name for p in plain] == ["00000_seed5.png", "00001_seed6.png", "00002_seed7.png"]
    canvas = _rgb(tmp_path / "a.png")
    places = []
    for p in plain:
        small = _rgb(p)
        assert small.shape == (16, 16, 3)
        k = 128 // 16  # the known upscale: the plain grid's, max(1, 128 // H)
        found = _find(canvas, np.repeat(np.repeat(small, k, 0), k, 1))
        assert len(found) == 1, f"{p.name}: found {len(found)} times"
        places.append(found[0])
    xs, ys = zip(*places)
    assert xs == tuple(sorted(xs)) and len(set(ys)) == 1  # one row, in seed order
    assert min(ys) > 40  # below a header
    assert _mask(canvas[:, :min(xs)], WANT_COLOR).any() and _mask(canvas[:, :min(xs)], AVOID_COLOR).any()


def test_annotate_with_selection_keeps_the_record(tiny_model, tmp_path, capsys):
    out = tmp_path / "sel.png"
    assert main(["sample", EXPR, "--model", tiny_model, "--n", "2", "--steps", "2", "--no-progress",
                 "--select", "lift", "--candidates", "2", "--annotate", "--out", str(out)]) == 0
    record = json.loads((tmp_path / "sel.json").read_text())
    assert len(record["images"]) == 2 and Image.open(out).size[1] > 128
    labels = tile_labels([0, 1], record["images"])
    assert all(lab.startswith(f"seed {i}, best of 2") for i, lab in enumerate(labels))


def test_annotate_refuses_out_dir(tiny_model, tmp_path, capsys):
    rc = main(["sample", EXPR, "--model", tiny_model, "--steps", "2", "--no-progress", "--annotate",
               "--out-dir", str(tmp_path / "d")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("compdiff: error:") and "--annotate" in err and "--out-dir" in err
    assert not list(tmp_path.rglob("*.png"))


def _samples(n=3, r=16):
    return np.random.default_rng(0).integers(0, 256, (n, r, r, 3), dtype=np.uint8)


def test_grid_has_a_header_and_exact_tiles():
    images = _samples()
    a = annotate_grid(images, EXPR, parse(EXPR).clauses(), task="objects", labels=tile_labels([0, 1, 2]))
    canvas = _rgb(a.image)
    assert a.scale == 8 and len(a.tiles) == 3
    for img, (x0, y0, x1, y1) in zip(images, a.tiles):
        assert np.array_equal(canvas[y0:y1, x0:x1], np.repeat(np.repeat(img, 8, 0), 8, 1))
    top = min(y0 for _, y0, _, _ in a.tiles)
    assert (canvas[:top - 20] < 100).all(-1).sum() > 200  # dark header text above the tiles


def test_panel_marks_the_requested_positions():
    a = annotate_grid(_samples(1, 32), EXPR, parse(EXPR).clauses(), task="objects")
    canvas = _rgb(a.image)
    x_tiles, y_tile = a.tiles[0][0], a.tiles[0][1]
    left = canvas[:, :x_tiles]
    for color, points in ((WANT_COLOR, [(0.3, 0.3), (0.7, 0.7)]), (AVOID_COLOR, [(0.7, 0.3)])):
        ys, xs = np.nonzero(_mask(left, color))
        assert len(xs), color
        # each requested point has marks around it in the 128-pixel panel at the tiles' height
        panel_x0 = 10
        for px, py in points:
            cx, cy = panel_x0 + px * 128, y_tile + py * 128
            near = (abs(xs - cx) < 14) & (abs(ys - cy) < 14)
            assert near.sum() > 10, (color, px, py)


@pytest.mark.parametrize("task,expr", [("attributes", "red AND cube AND NOT metal"), (None, "a cat AND NOT a dog")])
def test_other_tasks_get_the_header_alone(task, expr):
    a = annotate_grid(_samples(2), expr, parse(expr).clauses(), task=task)
    canvas = _rgb(a.image)
    assert a.tiles[0][0] == 10  # no panel on the left
    assert not _mask(canvas, WANT_COLOR).any() and not _mask(canvas, AVOID_COLOR).any()


def test_or_draws_one_panel_per_clause():
    expr = '"0.3,0.3" OR "0.7,0.7"'
    a = annotate_grid(_samples(1, 32), expr, parse(expr).clauses(), task="objects")
    ys, _ = np.nonzero(_mask(_rgb(a.image), WANT_COLOR))
    assert ys.max() - ys.min() > 128  # two panels, one above the other
