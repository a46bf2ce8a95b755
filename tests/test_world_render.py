"""The renderer: range and shape, batch independence, painting order, and that
every pair of colors / shapes / materials / sizes differs measurably at 32x32."""
import itertools

import pytest
import torch

from compdiff.world import COLORS, MATERIALS, SHAPES, SIZES, Obj, Scene, render, sample_scenes

R = 32


def _one(shape, color, size, material, x=0.5, y=0.5):
    return Scene((Obj(shape, color, size, material, x, y),))


def test_shape_range_dtype():
    scenes = sample_scenes(6, seed=0)
    for res in (16, 32, 64):
        img = render(scenes, res)
        assert img.shape == (6, 3, res, res) and img.dtype == torch.float32
        assert img.min() >= -1 and img.max() <= 1
    assert render([], 32).shape == (0, 3, 32, 32)


def test_batch_independent_of_neighbours():
    scenes = sample_scenes(8, seed=2)
    full = render(scenes, R)
    for i in (0, 5):
        assert torch.allclose(render([scenes[i]], R)[0], full[i], atol=1e-6)


def test_near_object_painted_over_far_one():
    # a red sphere behind (smaller y) a blue cube overlapping it in the image:
    # the overlap shows the blue cube whatever the order in the tuple
    far, near = Obj("sphere", "red", "large", "rubber", 0.5, 0.40), \
        Obj("cube", "blue", "large", "rubber", 0.5, 0.52)
    a, b = render([Scene((far, near)), Scene((near, far))], 64)
    assert torch.equal(a, b)
    px = a[:, int(0.52 * 64), 32]  # inside the cube's front face
    assert px[2] > px[0]  # blue over red


def _object_diff(a, b, floor):
    """Mean abs difference over the pixels either object (or shadow) touches."""
    m = ((a - floor).abs().amax(0) > 0.02) | ((b - floor).abs().amax(0) > 0.02)
    return (a - b).abs().mean(0)[m].mean().item()


@pytest.mark.parametrize("kind,vocab,floor_val", [
    ("color", COLORS, 0.05), ("shape", SHAPES, 0.10), ("material", MATERIALS, 0.07),
    ("size", SIZES, 0.10)])
def test_every_pair_differs_at_32(kind, vocab, floor_val):
    base = {"shape": SHAPES, "color": COLORS, "size": SIZES, "material": MATERIALS}
    others = [k for k in base if k != kind]
    combos = list(itertools.product(*(base[k] for k in others)))
    scenes = []
    for combo in combos:
        for v in vocab:
            attrs = dict(zip(others, combo), **{kind: v})
            scenes.append(_one(attrs["shape"], attrs["color"], attrs["size"], attrs["material"]))
    imgs = render(scenes, R).view(len(combos), len(vocab), 3, R, R)
    floor = render([Scene(())], R)[0]
    worst = min(_object_diff(imgs[c, i], imgs[c, j], floor)
                for c in range(len(combos)) for i, j in itertools.combinations(range(len(vocab)), 2))
    assert worst > floor_val, f"{kind}: worst pair differs by only {worst:.4f}"


def test_centered_layout_is_zoomed():
    o = Obj("sphere", "red", "small", "rubber", 0.5, 0.5)
    free, centered = render([Scene((o,)), Scene((o,), "centered")], R)
    floor = render([Scene(())], R)[0]
    area = [((x - floor).abs().amax(0) > 0.05).sum().item() for x in (free, centered)]
    assert area[1] > 3 * area[0]
