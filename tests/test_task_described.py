"""The ``described`` task: one object's description as a concept (world/tasks/described.py).

Text (parse/format, CLEVR's synonyms, caret errors), truth (holds, true_concepts), the training
label (sample_concept: never empty, its omission probabilities) and its batched twin on the
training device (world/batch.py), evaluation sets, and two-step training runs on both scene paths.
Distribution checks compare frequencies within 5 standard errors on a few thousand draws; seeds
are fixed, so a pass is reproducible.
"""
import itertools
import json
from functools import lru_cache

import numpy as np
import pytest
import torch

from compdiff.cli import main
from compdiff.errors import ParseError
from compdiff.world.concept_sets import concept_sets
from compdiff.world import COLORS, MATERIALS, SHAPES, SIZES, Obj, Scene, WorldDataset, get_task, scene_at
from compdiff.world.batch import label_rows, make_generator, sample_scene_batch, scenes_from_tensors
from compdiff.world.tasks import TASKS, Desc, DescribedTask

T = get_task("described")
Z_MAX = 5.0
NAMES = ("shape", "color", "size", "material")  # the row order
VOCABS = (SHAPES, COLORS, SIZES, MATERIALS)


def obj(shape="cube", color="red", size="small", material="metal", x=0.5, y=0.5) -> Obj:
    return Obj(shape, color, size, material, x, y)


def caret_at(text: str, err: pytest.ExceptionInfo) -> int:
    """The 1-based column the ParseError's caret marks, after checking it quotes ``text``."""
    lines = str(err.value).split("\n")
    assert lines[1] == f"  {text}" and lines[2].strip() == "^"
    col = len(lines[2]) - 2
    assert f"at column {col}\n" in str(err.value)
    return col


def pattern_probs(omit: float) -> np.ndarray:
    """P(kept-word pattern) for patterns 1..15 (bit w = word w of NAMES kept), conditioned on keeping one."""
    p = np.array([np.prod([(1 - omit) if i >> w & 1 else omit for w in range(4)]) for i in range(1, 16)])
    return p / p.sum()


def pattern_of(rows: torch.Tensor) -> torch.Tensor:
    """(N, 4) rows -> (N,) pattern index 0..15 (bit w set where word w is kept)."""
    return ((rows != 0).long() * (2 ** torch.arange(4))).sum(1)


def max_z(a: torch.Tensor, n_a: int, b: torch.Tensor, n_b: int) -> float:
    """Largest |p_a - p_b| over the pooled standard error, for counts a, b out of n_a, n_b."""
    a, b = a.double(), b.double()
    p = (a + b) / (n_a + n_b)
    se = (p * (1 - p) * (1 / n_a + 1 / n_b)).sqrt().clamp(min=1e-12)
    return float(((a / n_a - b / n_b).abs() / se).max())


# ---- registry and spec ----------------------------------------------------------------
def test_registered_as_a_builtin():
    assert TASKS[-1] == "described" and isinstance(T, DescribedTask)
    assert (T.max_k, T.layout, T.min_objects, T.max_objects, T.row_dim) == (3, "free", 1, 3, 4)
    assert [T.min_objects_for(k) for k in (1, 2, 3)] == [1, 2, 3]
    assert T.max_true() == 3 and T.max_true(2) == 2
    assert T.condition_spec() == {"cond_kind": "tokens", "vocab_sizes": (4, 9, 3, 3),
                                  "token_groups": ((0, 1, 2, 3),)}
    # one object of a relation: the same slots as a relations row's first four
    assert T.condition_spec()["vocab_sizes"] == get_task("relations").condition_spec()["vocab_sizes"][:4]


# ---- text -------------------------------------------------------------------------------
ALL_DESCS = [Desc(*v) for v in itertools.product(*[(None, *voc) for voc in VOCABS]) if any(v)]


def test_parse_format_round_trip():
    assert len(ALL_DESCS) == 4 * 9 * 3 * 3 - 1
    for d in ALL_DESCS:
        text = T.format(d)
        assert T.parse(text) == d and T.format(T.parse(text)) == text
        assert T.row_concept(T.concept_row(d)) == d
    assert T.format(Desc("cube", "red", "small", "metal")) == "a small red metal cube"
    assert T.format(Desc(color="red", material="rubber")) == "a red rubber thing"
    assert T.from_tensor(T.to_tensor(ALL_DESCS)) == ALL_DESCS
    assert T.from_tensor(torch.zeros(1, 4, dtype=torch.int64)) == [None]


@pytest.mark.parametrize("text,want", [
    ("the big shiny ball", Desc("sphere", None, "large", "metal")),
    ("a tiny matte block", Desc("cube", None, "small", "rubber")),
    ("a metallic gray object", Desc(None, "gray", None, "metal")),
])
def test_synonyms_read_as_the_canonical_concept(text, want):
    assert T.parse(text) == want
    assert T.parse(text.upper()) == want and T.parse(f"  {text}  ") == want
    assert T.parse(T.format(want)) == want and "ball" not in T.format(want)


def test_wording_variants_read_as_one_concept():
    d = Desc("cube", "red", "small", "metal")
    for text in ("a small red metal cube", "the metal red small cube", "an SMALL red shiny block",
                 "small red metallic cube", "a tiny red metal block"):
        assert T.parse(text) == d, text
    assert T.parse("a red thing") == T.parse("red object") == T.parse("the red") == Desc(color="red")
    assert T.parse("a cylinder") == Desc(shape="cylinder")


@pytest.mark.parametrize("text,needle,col", [
    ("a small red pyramid", "unknown word 'pyramid'", 13),
    ("a shiny-ish cube", "unknown word 'shiny-ish'", 3),
    ("a red red cube", "a second color 'red' (already 'red')", 7),
    ("a big small cube", "a second size 'small' (already 'large')", 7),
    ("a cube red", "unexpected word 'red' after the noun", 8),
    ("a red cube left of a blue sphere", "'left' starts a relation", 12),
    ("a thing", "'a thing' names no attribute", 3),
    ("the", "'the' names no attribute", 1),
    ("", "empty description", 1),
])
def test_bad_text_gets_a_caret_and_the_accepted_words(text, needle, col):
    with pytest.raises(ParseError) as e:
        T.parse(text)
    msg = str(e.value)
    assert needle in msg and caret_at(text, e) == col
    for entry in ("sphere (also ball)", "large (also big)", "metal (also shiny, metallic)", "'thing'/'object'"):
        assert entry in msg


def test_the_null_row_is_no_description():
    with pytest.raises(ValueError, match="at least one attribute"):
        T.concept_row(Desc())
    with pytest.raises(ValueError, match="null row"):
        T.row_concept([0, 0, 0, 0])
    with pytest.raises(ValueError, match="color index 9"):
        T.row_concept([1, 9, 0, 0])


# ---- truth ------------------------------------------------------------------------------
def test_holds_and_true_concepts():
    a = obj("cube", "red", "small", "metal", 0.2, 0.2)
    b = obj("sphere", "blue", "large", "rubber", 0.7, 0.7)
    scene = Scene((b, a, a))  # a twin: its description once
    assert T.holds(T.parse("a red cube"), scene) and T.holds(T.parse("the big ball"), scene)
    assert T.holds(T.parse("a metal thing"), scene) and T.holds(T.parse("rubber"), scene)
    assert not T.holds(T.parse("a red sphere"), scene)  # red and sphere, but on different objects
    assert not T.holds(T.parse("a blue metal thing"), scene)
    assert not T.holds(T.parse("a red cube"), Scene(()))
    assert T.true_concepts(scene) == [Desc.of(a), Desc.of(b)]  # deduplicated, sorted by row
    assert T.region_center(T.parse("a large thing"), scene) == (0.7, 0.7)
    assert T.region_center(T.parse("a red cube"), Scene((a, obj(x=0.9, y=0.1)))) == (0.2, 0.2)  # the first
    assert T.region_center(T.parse("a green thing"), scene) is None


def test_false_concept_changes_one_attribute():
    rng = np.random.default_rng(0)
    for i in range(200):
        scene = T.scene(5, i)
        c = T.sample_concept(scene, rng)
        f = T.false_concept(c, scene, rng)
        assert f is not None and not T.holds(f, scene)
        assert sum(getattr(c, n) != getattr(f, n) for n in NAMES) == 1


# ---- the training label -------------------------------------------------------------------
def test_sample_concept_is_true_and_never_empty():
    rng = np.random.default_rng(1)
    for i in range(300):
        scene = T.scene(3, i)
        assert 1 <= len(scene.objects) <= 3
        for _ in range(10):
            c = T.sample_concept(scene, rng)
            assert c != Desc() and T.holds(c, scene)
            full = [Desc.of(o) for o in scene.objects]
            assert any(all(getattr(c, n) in (None, getattr(d, n)) for n in NAMES) for d in full)


def test_sample_concept_omission_and_object_probabilities():
    """Patterns of kept words as independent omission with 0.3 conditioned on keeping one; the
    object uniform (read from the color, where kept)."""
    scene = Scene((obj("cube", "red"), obj("sphere", "blue", x=0.2), obj("cylinder", "green", x=0.8)))
    rng, n = np.random.default_rng(2), 20_000
    rows = T.to_tensor([T.sample_concept(scene, rng) for _ in range(n)])
    want = torch.tensor(pattern_probs(T.omit_prob))
    got = torch.bincount(pattern_of(rows), minlength=16)
    assert got[0] == 0
    se = (want * (1 - want) / n).sqrt()
    assert ((got[1:] / n - want).abs() < Z_MAX * se).all()
    omitted = (rows == 0).double().mean()
    p_omit = (0.3 - 0.3**4) / (1 - 0.3**4)
    assert abs(omitted - p_omit) < Z_MAX * (p_omit * (1 - p_omit) / rows.numel()) ** 0.5
    colors = rows[:, 1][rows[:, 1] > 0]
    freq = torch.bincount(colors, minlength=len(COLORS) + 1)[[2, 3, 4]].double() / len(colors)  # red, blue, green
    assert freq.sum() == 1 and ((freq - 1 / 3).abs() < Z_MAX * (2 / 9 / len(colors)) ** 0.5).all()


@lru_cache(maxsize=None)
def python_labels(n: int) -> torch.Tensor:
    rng = np.random.default_rng(3)
    return T.to_tensor([T.sample_concept(scene_at(123, i, 1, 3, "free"), rng) for i in range(n)])


def test_batched_labels_match_sample_concept():
    n_t, n_p = 20_000, 4_000
    tb = sample_scene_batch(456, n_t, "cpu", T.min_objects, T.max_objects, T.layout)
    rows_t, rows_p = label_rows(T, tb, make_generator(7, "cpu")), python_labels(n_p)
    assert rows_t.shape == (n_t, 4) and rows_t.dtype == T.dtype
    assert rows_t.any(1).all()  # never the null row
    for col, size in enumerate(T.condition_spec()["vocab_sizes"]):
        a, b = torch.bincount(rows_t[:, col], minlength=size), torch.bincount(rows_p[:, col], minlength=size)
        assert max_z(a, n_t, b, n_p) < Z_MAX, col
    a, b = torch.bincount(pattern_of(rows_t), minlength=16), torch.bincount(pattern_of(rows_p), minlength=16)
    assert a[0] == 0 == b[0] and max_z(a[1:], n_t, b[1:], n_p) < Z_MAX
    want = torch.tensor(pattern_probs(T.omit_prob))
    assert ((a[1:] / n_t - want).abs() < Z_MAX * (want * (1 - want) / n_t).sqrt()).all()
    scenes = scenes_from_tensors(tb)[:2000]
    assert all(T.holds(c, s) for c, s in zip(T.from_tensor(rows_t[:2000]), scenes))


def test_batched_labels_pick_a_uniform_object():
    # scenes of 3 objects whose colors tell them apart: slot frequencies of the labelled object
    tb = sample_scene_batch(9, 6000, "cpu", 3, 3, "free")
    tb = tb._replace(color=torch.tensor([1, 2, 3]).expand(6000, 3).clone())
    rows = label_rows(T, tb, make_generator(10, "cpu"))
    kept = rows[:, 1] > 0
    slot = rows[kept, 1] - 2  # color index + 1 = 2, 3, 4 for slots 0, 1, 2
    freq = torch.bincount(slot, minlength=3).double() / int(kept.sum())
    assert ((freq - 1 / 3).abs() < Z_MAX * (2 / 9 / int(kept.sum())) ** 0.5).all()


def test_device_batch_and_its_meta_default_device():
    ds = WorldDataset("described", 16, seed=0, null_prob=0.25)
    b = ds.device_batch(ds.step_generator(1), 64, "cpu")
    assert b.image.shape == (64, 3, 16, 16) and b.cond.shape == (64, 4)
    assert not b.cond[b.is_null].any() and b.cond[~b.is_null].any(1).all()
    with torch.device("meta"):  # every tensor made on the generator's device
        again = ds.device_batch(ds.step_generator(1), 64, "cpu")
    assert all(torch.equal(x, y) for x, y in zip(b, again))


def test_the_judge_reads_described_concepts():
    """Concept agreement of the judge with the truth on torch renders, as for the other tasks
    (test_world_batch.test_judge_reads_torch_renders): the label and a false concept of each scene."""
    from compdiff.eval.judge import load_judge
    from compdiff.world.batch import render_batch

    n = 256
    tb = sample_scene_batch(900_000_001, n, "cpu", T.min_objects, T.max_objects, T.layout)
    rows = label_rows(T, tb, make_generator(900_000_002, "cpu"))
    with torch.no_grad():
        judged = load_judge(32).read(render_batch(tb, 32), layout=T.layout)
    rng = np.random.default_rng(3)
    agree = total = 0
    for c, true, read in zip(T.from_tensor(rows), scenes_from_tensors(tb), judged):
        f = T.false_concept(c, true, rng)
        for concept in [c] + ([f] if f is not None else []):
            agree += T.holds(concept, read) == T.holds(concept, true)
            total += 1
    assert total > 1.9 * n and agree / total >= 0.98


# ---- evaluation sets ------------------------------------------------------------------------
def test_concept_sets_are_distinct_real_objects():
    for k in (1, 2, 3):
        for s in concept_sets(T, k, 30, seed=4):
            assert len(s.positives) == k == len(set(s.positives)) and len(s.scene.objects) >= k
            full = {Desc.of(o) for o in s.scene.objects}
            assert all(c in full for c in s.positives) and s.satisfied_by(T, s.scene)


# ---- training on both scene paths -------------------------------------------------------------
TRAIN = ["train", "--task", "described", "--resolution", "16", "--steps", "2", "--batch-size", "4",
         "--channels", "8,8", "--layers-per-block", "1", "--precision", "fp32", "--no-progress"]


@pytest.mark.parametrize("scenes,extra", [("torch", ["--cross-attention"]), ("python", [])])
def test_train_runs_on_both_scene_paths(scenes, extra, tmp_path):
    out = tmp_path / "run"
    assert main([*TRAIN, "--scenes", scenes, *extra, "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["scenes"] == scenes
    info = json.loads((out / "model" / "compdiff.json").read_text())
    assert info["model"]["task"] == "described" and info["training"]["scenes"] == scenes
