"""Scene sampling: determinism, per-index independence, no overlap, layouts."""
import itertools

import pytest

from compdiff.world import (COLORS, EXTENT, MATERIALS, SHAPES, SIZES, Obj, Scene,
                            sample_scenes, scene_at)


def test_deterministic_per_seed_and_index():
    a = sample_scenes(50, seed=3)
    assert a == sample_scenes(50, seed=3)
    assert a != sample_scenes(50, seed=4)
    # scene i depends only on (seed, i): a prefix is a prefix, and scene_at agrees
    assert sample_scenes(10, seed=3) == a[:10]
    assert scene_at(3, 37) == a[37]


@pytest.mark.parametrize("layout", ["free", "centered"])
def test_objects_valid_inside_and_not_overlapping(layout):
    counts = set()
    for sc in sample_scenes(300, seed=1, min_objects=1, max_objects=5, layout=layout):
        assert sc.layout == layout
        counts.add(len(sc.objects))
        for o in sc.objects:
            assert o.shape in SHAPES and o.color in COLORS
            assert o.size in SIZES and o.material in MATERIALS
            assert EXTENT[o.size] <= o.x <= 1 - EXTENT[o.size]
            assert EXTENT[o.size] <= o.y <= 1 - EXTENT[o.size]
        for a, b in itertools.combinations(sc.objects, 2):
            assert ((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5 >= a.extent + b.extent - 1e-9
    assert counts == ({1, 2, 3, 4, 5} if layout == "free" else {1})


def test_centered_layout_main_object_near_center():
    for sc in sample_scenes(50, seed=0, layout="centered"):
        assert abs(sc.main.x - 0.5) <= 0.03 and abs(sc.main.y - 0.5) <= 0.03


def test_object_count_range_and_bad_arguments():
    assert {len(s.objects) for s in sample_scenes(40, 0, 2, 3)} == {2, 3}
    with pytest.raises(ValueError):
        sample_scenes(1, 0, min_objects=3, max_objects=2)
    with pytest.raises(ValueError):
        sample_scenes(1, 0, layout="diagonal")
    with pytest.raises(ValueError):
        Obj("cone", "red", "small", "metal", 0.5, 0.5)


def test_scene_is_frozen_and_hashable():
    sc = Scene((Obj("cube", "red", "small", "metal", 0.5, 0.5),))
    assert hash(sc) == hash(Scene((Obj("cube", "red", "small", "metal", 0.5, 0.5),)))
    with pytest.raises(AttributeError):
        sc.layout = "centered"


def test_obj_parse_reads_back_describe():
    for scene in sample_scenes(50, seed=3):
        for o in scene.objects:
            back = Obj.parse(o.describe())
            assert (back.shape, back.color, back.size, back.material) == (o.shape, o.color, o.size, o.material)
            assert abs(back.x - o.x) <= 0.005 and abs(back.y - o.y) <= 0.005
    assert Obj.parse("small cyan metal sphere at 0.10,0.90") == Obj("sphere", "cyan", "small", "metal", 0.1, 0.9)


@pytest.mark.parametrize("text", ["large red metal cube", "large red metal cube at 0.5", "red metal cube at 0.5,0.5",
                                  "large red metal cube at x,0.5", "large pink metal cube at 0.50,0.50",
                                  "large red metal cube near 0.50,0.50"])
def test_obj_parse_refuses_other_lines(text):
    with pytest.raises(ValueError, match="object"):
        Obj.parse(text)
