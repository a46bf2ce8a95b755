"""Held-out splits: what they hold out, that single values stay, and the seen/held-out concept sets."""
from itertools import product

import pytest
import torch

from compdiff.errors import InputError
from compdiff.world.concept_sets import concept_sets
from compdiff.world.holdout import SPLITS, get_split
from compdiff.world.scene import COLORS, MATERIALS, SHAPES, Obj, Scene
from compdiff.world.tasks import get_task


def test_attributes_default_holds_out_a_quarter_and_keeps_every_value():
    split = get_split("attributes", "default")
    shape_pairs, material_pairs = split.within["color,shape"], split.within["color,material"]
    assert len(shape_pairs) == 6 and len(set(shape_pairs)) == 6  # of 24
    assert len(material_pairs) == 4 and len(set(material_pairs)) == 4  # of 16
    seen_cs = set(product(COLORS, SHAPES)) - set(shape_pairs)
    seen_cm = set(product(COLORS, MATERIALS)) - set(material_pairs)
    for value in COLORS + SHAPES:
        assert any(value in pair for pair in seen_cs), value
    for value in COLORS + MATERIALS:
        assert any(value in pair for pair in seen_cm), value
    # an object allowed in training exists for every single value
    for c, s, m in product(COLORS, SHAPES, MATERIALS):
        scene = Scene((Obj(s, c, "small", m, 0.5, 0.5),), "centered")
        assert split.allows(scene) == ((c, s) not in shape_pairs and (c, m) not in material_pairs)


def test_relations_default_colors_never_together():
    split = get_split("relations", "default")
    assert len(split.across) == 7 and all(a != b for a, b in split.across)  # of 28
    red, gray = Obj("cube", "red", "small", "metal", 0.2, 0.5), Obj("sphere", "gray", "small", "rubber", 0.8, 0.5)
    blue = Obj("sphere", "blue", "small", "rubber", 0.8, 0.5)
    assert ("gray", "red") in split.across
    assert split.violations(Scene((red, gray))) == ["gray with red"]
    assert split.allows(Scene((red, blue)))
    task = get_task("relations")
    rel = task.parse("a red cube left of a gray sphere")
    assert split.asked([rel]) == ["red with gray"] and split.asked([task.parse("a red cube left of a blue ball")]) == []


def test_objects_le2_counts():
    split = get_split("objects", "le2")
    objs = tuple(Obj("cube", "red", "small", "metal", x, 0.5) for x in (0.15, 0.5, 0.85))
    assert split.allows(Scene(objs[:2])) and split.violations(Scene(objs)) == ["3 objects"]


def test_unknown_split_is_an_input_error_listing_the_splits():
    with pytest.raises(InputError, match="splits of attributes: default"):
        get_split("attributes", "nope")
    assert {t for t, _ in SPLITS} == {"attributes", "relations", "objects"}
    with pytest.raises(InputError, match="splits of described: none"):  # a task without splits
        get_split("described", "default")
    with pytest.raises(InputError, match="unknown task 'colours'; accepted: objects"):  # not a task at all
        get_split("colours", "default")


@pytest.mark.parametrize("task,name,k", [("attributes", "default", 2), ("attributes", "default", 3),
                                         ("relations", "default", 1), ("relations", "default", 2),
                                         ("objects", "le2", 3)])
def test_seen_and_held_out_sets(task, name, k):
    t, split = get_task(task), get_split(task, name)
    held = concept_sets(t, k, 40, seed=3, sets="held-out", split=split)
    assert len(held) == 40 and all(split.asked(s.positives) for s in held)
    assert all(s.satisfied_by(t, s.scene) for s in held)  # still jointly satisfiable: read off a real scene
    if task != "objects":
        seen = concept_sets(t, k, 40, seed=3, sets="seen", split=split)
        assert all(not split.asked(s.positives) for s in seen)
    everything = concept_sets(t, k, 40, seed=3)
    assert everything == concept_sets(t, k, 40, seed=3, sets="all", split=split)  # the filter changes nothing else


def test_set_filters_need_a_split_of_the_task():
    with pytest.raises(InputError, match="needs a held-out split"):
        concept_sets(get_task("attributes"), 2, 4, sets="seen")
    with pytest.raises(InputError, match="needs a held-out split"):
        concept_sets(get_task("attributes"), 2, 4, sets="seen", split=get_split("relations", "default"))


SPLIT_IDS = [("attributes", "default"), ("relations", "default"), ("objects", "le2")]


@pytest.mark.parametrize("task,name", SPLIT_IDS)
def test_100000_training_scenes_show_no_held_out_combination(task, name):
    """The torch path (what training draws), 100,000 scenes per split: zero held-out combinations."""
    from compdiff.world import WorldDataset
    from compdiff.world.batch import sample_scene_batch, scenes_from_tensors

    split = get_split(task, name)
    data = WorldDataset(task, 16, seed=0, hold_out=split)
    t = get_task(task)
    gen = torch.Generator().manual_seed(0)
    shown = 0
    for _ in range(10):
        batch = sample_scene_batch(gen, 10_000, None, t.min_objects, data.max_objects, t.layout,
                                   allows=split.allows_batch)
        shown += int((~split.allows_batch(batch)).sum())
    assert shown == 0
    # the vectorised check agrees with the scene-level one, and the unfiltered world does show them
    raw = sample_scene_batch(torch.Generator().manual_seed(1), 2000, None, t.min_objects, t.max_objects, t.layout)
    flags = split.allows_batch(raw).tolist()
    assert flags == [split.allows(s) for s in scenes_from_tensors(raw)] and not all(flags)


@pytest.mark.parametrize("task,name", SPLIT_IDS)
def test_the_python_path_redraws_held_out_scenes(task, name):
    from compdiff.world import WorldDataset

    split = get_split(task, name)
    data = WorldDataset(task, 16, seed=0, hold_out=split, length=1000)
    assert all(split.allows(data.scene(i)) for i in range(1000))
    if split.max_objects is None:  # same object counts: an allowed scene is not redrawn
        free = WorldDataset(task, 16, seed=0, length=1000)
        same = [i for i in range(1000) if split.allows(free.scene(i))]
        assert len(same) > 300 and all(data.scene(i) == free.scene(i) for i in same[:200])
    with pytest.raises(InputError, match="belongs to task"):
        WorldDataset("objects" if task != "objects" else "relations", 16, seed=0, hold_out=split)


def test_joint_subsets_are_random_non_empty_subsets_of_the_true_set():
    from compdiff.world import WorldDataset

    data = WorldDataset("attributes", 16, seed=0, joint=True, joint_subsets=True, length=400)
    sizes = [int(data[i].mask.sum()) for i in range(400)]
    assert min(sizes) == 1 and max(sizes) == 4 and all(abs(sizes.count(k) / 400 - 0.25) < 0.08 for k in range(1, 5))
    t = get_task("attributes")
    for i in range(50):
        s = data[i]
        rows = t.from_tensor(s.cond[s.mask])
        assert all(t.holds(c, data.scene(i)) for c in rows)
    with pytest.raises(InputError, match="joint datasets"):
        WorldDataset("attributes", 16, seed=0, joint_subsets=True)


def test_train_with_a_hold_out_records_it_and_eval_draws_held_out_sets(tmp_path):
    """compdiff train --hold-out NAME writes the split into compdiff.json; eval --sets reads it."""
    import json

    from compdiff.cli import main

    run = tmp_path / "run"
    assert main(["train", "--task", "attributes", "--hold-out", "default", "--steps", "2", "--batch-size", "4",
                 "--channels", "16,32", "--layers-per-block", "1", "--resolution", "32", "--precision", "fp32",
                 "--no-progress", "--out", str(run)]) == 0
    training = json.loads((run / "model" / "compdiff.json").read_text())["training"]
    assert training["hold_out"] == get_split("attributes", "default").to_json() and training["scenes"] == "torch"
    rep = tmp_path / "rep"
    assert main(["eval", "--task", "attributes", "--model", str(run / "model"), "--sets", "held-out",
                 "--components", "2", "--n", "2", "--steps", "2", "--methods", "composed", "--no-progress",
                 "--out", str(rep)]) == 0
    spec = json.loads((rep / "results.json").read_text())["spec"]
    assert spec["sets"] == "held-out" and spec["hold_out"] == "default"
    assert main(["eval", "--task", "attributes", "--sets", "seen", "--components", "2", "--n", "2",
                 "--out", str(tmp_path / "rep2")]) == 2  # the shipped model has no split: --hold-out needed
    # a K that has no such sets is refused at once, naming why, and nothing is written
    assert main(["eval", "--task", "attributes", "--model", str(run / "model"), "--sets", "held-out",
                 "--components", "1,2", "--n", "2", "--out", str(tmp_path / "rep3")]) == 2
    assert not (tmp_path / "rep3").exists()


@pytest.mark.parametrize("task,name,sets,possible,impossible", [
    ("attributes", "default", "held-out", [2, 3], [1]),  # a held-out pair of one object: two values
    ("attributes", "default", "seen", [1, 2, 3], []),
    ("relations", "default", "held-out", [1, 2, 3], []),  # one relation can ask a held-out color pair
    ("relations", "default", "seen", [1, 2, 3], []),
    ("objects", "le2", "held-out", [3, 4, 5], [1, 2]),  # beyond training by their number of positions
    ("objects", "le2", "seen", [1, 2], [3, 4, 5]),
])
def test_why_no_sets_agrees_with_drawing_them(task, name, sets, possible, impossible):
    split, t = get_split(task, name), get_task(task)
    for k in possible:
        assert split.why_no_sets(k, sets) is None
        assert len(concept_sets(t, k, 2, sets=sets, split=split)) == 2
    for k in impossible:
        assert "K" in split.why_no_sets(k, sets)
    for k in impossible[:1]:  # drawing finds none (each such K costs thousands of draws)
        with pytest.raises(InputError, match="has \\(almost\\) none"):
            concept_sets(t, k, 1, sets=sets, split=split)


def test_world_cli_prints_splits_and_renders_the_held_out_world(tmp_path, capsys):
    import json

    from compdiff.cli import main

    assert main(["world", "hold-out", "--task", "attributes", "--name", "default"]) == 0
    assert json.loads(capsys.readouterr().out) == get_split("attributes", "default").to_json()
    out = tmp_path / "w.png"
    assert main(["world", "render", "--task", "relations", "--hold-out", "default", "--n", "24", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["hold_out"]["name"] == "default" and len(meta["scenes"]) == 24
    split = get_split("relations", "default")
    for s in meta["scenes"]:
        colors = {o["color"] for o in s["objects"]}
        assert not any(a in colors and b in colors for a, b in split.across)
    assert main(["world", "hold-out", "--task", "objects", "--name", "nope"]) == 2


def test_held_out_sets_cover_every_held_out_pair():
    """Sets version 2: which concepts a set asks is drawn apart from its scene. (Version 1 drew both
    from one numpy stream, and its 256 held-out K = 2 sets asked only 5 of the 10 pairs.)"""
    t, split = get_task("attributes"), get_split("attributes", "default")
    pairs = {p for s in concept_sets(t, 2, 256, seed=7, sets="held-out", split=split) for p in split.asked(s.positives)}
    assert pairs == {f"{a} {b}" for kinds in split.within.values() for a, b in kinds}


def test_which_concepts_a_set_asks_does_not_depend_on_the_scene():
    """Attributes, K = 1: among scenes of any one colour, the colour is the word asked in about a
    quarter of the sets (version 1 never asked "gray" of a gray object)."""
    from collections import Counter

    t = get_task("attributes")
    sets = concept_sets(t, 1, 4000, seed=7)
    by_colour, asked = Counter(), Counter()
    for s in sets:
        by_colour[s.scene.main.color] += 1
        asked[s.scene.main.color] += s.positives[0].kind == "color"
    for colour, n in by_colour.items():
        p = asked[colour] / n  # 1/4 in expectation; n ~ 500, so 5 standard errors ~ 0.1
        assert abs(p - 0.25) < 0.1, (colour, p, n)
