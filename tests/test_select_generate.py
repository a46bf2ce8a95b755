"""Selection while sampling (issue #34, deliverable 2) through the one generation path, compdiff.generate:
M candidates per image from select.candidate_seed, scored by lift (fresh) or cached-lift (the trajectory),
the best kept by the keep rule. Tiny models, 2 steps, M = 2; the doors' bit-identity and every
pipeline family are in tests/test_doors.py."""
from __future__ import annotations

import math

import pytest
import torch
from analytic import default_concepts

import compdiff as cd
from compdiff.generate import OpenedModel, sample_latents
from compdiff.lift import lift_x0
from compdiff.schedule import NoiseSchedule
from compdiff.select import candidate_seed, lift_seed, margins, signs

EXPR = '"0.3,0.3" AND "0.7,0.7" AND NOT "0.7,0.3"'


@pytest.fixture(scope="module")
def world(tiny_model):
    return cd.open_model(tiny_model)


class Counting:
    """A Denoiser that counts its calls and rows."""

    def __init__(self, inner):
        self.inner, self.calls, self.rows = inner, 0, 0

    def __call__(self, x, t, cond):
        self.calls += 1
        self.rows += x.shape[0]
        return self.inner(x, t, cond)


def gaussian(denoiser=None) -> OpenedModel:
    """The analytic Gaussian concepts of tests/analytic.py as an opened model (2-D samples, identity decode)."""
    gc = default_concepts(NoiseSchedule.cosine(1000))
    return OpenedModel(denoiser or gc, gc, gc.schedule, (2,), lambda x: x, "gaussian", "gaussian", 1.0,
                       sampling={"sampler": "ddim", "steps": 20})


def test_m_equal_1_is_plain_sampling_bit_for_bit(world):
    seeds = [5, 6, 7]
    plain = cd.generate(world, EXPR, seeds, steps=2)
    assert plain.select is None and plain.kept == () and plain.model_evals == 3 * 4 * 2
    for how in ("lift", "cached-lift"):
        one = cd.generate(world, EXPR, seeds, steps=2, select=how, candidates=1)
        assert torch.equal(one.images, plain.images), how
        assert one.kept == (0, 0, 0) and one.kept_seeds == (5, 6, 7) and one.seeds == (5, 6, 7)
        assert [c for c, _, _ in one.lifts[0]] == ["0.3,0.3", "0.7,0.7", "0.7,0.3"]
        assert [w for _, w, _ in one.lifts[0]] == ["present", "present", "absent"]
    # select=None with candidates 1 is plain too; an OR expression and a corrector likewise
    assert torch.equal(cd.generate(world, EXPR, seeds, steps=2, candidates=1).images, plain.images)
    orx = '"0.3,0.5" OR "0.7,0.5":3'
    corr = cd.Corrector("ula")
    base = cd.generate(world, orx, seeds, steps=2, corrector=corr)
    sel = cd.generate(world, orx, seeds, steps=2, corrector=corr, select="cached-lift", candidates=1)
    assert torch.equal(base.images, sel.images) and base.assignment == sel.assignment


def test_selection_returns_exactly_n_deterministic_images_with_their_tables(world):
    seeds = [0, 1, 2]
    for how in ("lift", "cached-lift"):
        a = cd.generate(world, EXPR, seeds, steps=2, select=how, candidates=2)
        b = cd.generate(world, EXPR, seeds, steps=2, select=how, candidates=2, batch_size=1)
        again = cd.generate(world, EXPR, seeds, steps=2, select=how, candidates=2)
        assert a.images.shape == (3, 3, 16, 16) and a.select == how and a.candidates == 2
        assert torch.equal(a.images, again.images) and a.lifts == again.lifts and a.kept == again.kept
        assert a.kept == b.kept and torch.allclose(a.images, b.images, atol=1e-4)  # batches: float round-off only
        for i, s in enumerate(seeds):
            assert a.kept_seeds[i] == candidate_seed(s, 0, a.kept[i])
            table = torch.tensor([[v for _, _, v in a.lifts[i]]], dtype=torch.float64)
            assert a.margins[i] == pytest.approx(float(margins(table, signs(EXPR, ["0.3,0.3", "0.7,0.7",
                                                                               "0.7,0.3"]))[0]))
            assert a.satisfied[i] == (a.margins[i] > 0)
            rec = a.record(i)
            assert rec["seed"] == a.kept_seeds[i] and rec["image_seed"] == s and rec["candidates"] == 2
            assert [t["want"] for t in rec["lift"]] == ["present", "present", "absent"]


def test_the_kept_candidate_is_the_best_and_its_lift_is_the_candidates_own(world):
    """The kept image is candidate j's own sample (the plain image of seed candidate_seed(s, 0, j) in a
    batch of 2), its lift table that candidate's lift_x0 with seed lift_seed(its seed), and its margin the
    largest of the two candidates'."""
    seeds = [3, 4]
    got = cd.generate(world, EXPR, seeds, steps=2, select="lift", candidates=2)
    for i, s in enumerate(seeds):
        pair = [candidate_seed(s, 0, j) for j in range(2)]
        cand = cd.generate(world, EXPR, pair, steps=2)  # the same two candidates, plainly
        x0 = sample_latents(world, EXPR, pair, steps=2)
        scores = lift_x0(world.denoiser, world.encoder, world.schedule, x0, EXPR,
                         seeds=[lift_seed(p) for p in pair]).scores
        marg = margins(scores, signs(EXPR, ["0.3,0.3", "0.7,0.7", "0.7,0.3"]))
        j = int(torch.argmax(marg))
        assert got.kept[i] == j and got.margins[i] == pytest.approx(float(marg[j]), rel=1e-4, abs=1e-4)
        assert torch.allclose(got.images[i], cand.images[j], atol=1e-4)


def test_each_kept_image_satisfies_the_rule_when_any_candidate_does():
    """Gaussian concepts: 16 images, M = 4; the kept one satisfies "1" AND NOT "3" whenever one of its
    candidates does (by the same scores), and selection satisfies more images than plain sampling."""
    model = gaussian()
    expr, seeds = '"1" AND NOT "3"', list(range(16))
    plain = cd.generate(model, expr, seeds, select="lift", candidates=1)
    kept = cd.generate(model, expr, seeds, select="lift", candidates=4)
    every = cd.generate(model, expr, [candidate_seed(s, 0, j) for s in seeds for j in range(4)])
    scores = lift_x0(model.denoiser, model.encoder, model.schedule, every.images, expr,
                     seeds=[lift_seed(candidate_seed(s, 0, j)) for s in seeds for j in range(4)]).scores
    any_ok = (margins(scores, signs(expr, ["1", "3"])) > 0).reshape(16, 4).any(1)
    assert list(kept.satisfied) == any_ok.tolist()
    assert sum(kept.satisfied) > sum(plain.satisfied)
    for lifts, ok in zip(kept.lifts, kept.satisfied):
        (_, _, a), (_, _, b) = lifts
        assert ok == (a > 0 and b < 0)


def test_cached_lift_adds_no_model_evaluation():
    counted = Counting(default_concepts(NoiseSchedule.cosine(1000)))
    model = gaussian(counted)
    expr, seeds = '"1" AND NOT "3"', list(range(8))
    plain = cd.generate(model, expr, seeds, candidates=None)
    calls, rows = counted.calls, counted.rows
    assert rows == plain.model_evals == 8 * 3 * 20 and calls == 20
    counted.calls = counted.rows = 0
    cached = cd.generate(model, expr, seeds, select="cached-lift", candidates=2)
    assert counted.calls == 20 and counted.rows == 2 * rows  # 2 candidates: twice the rows, the same calls
    assert cached.model_evals == counted.rows and cached.lift_evals == 0
    counted.calls = counted.rows = 0
    fresh = cd.generate(model, expr, seeds, select="lift", candidates=2)
    assert fresh.lift_evals == 16 * 3 * 10 and counted.rows == 2 * rows + fresh.lift_evals
    assert fresh.model_evals == counted.rows


def test_per_image_expressions_are_selected_each_by_its_own(world):
    exprs = ['"0.3,0.3" AND NOT "0.7,0.3"', '"0.5,0.5" AND "0.2,0.8"', '"0.3,0.3" AND NOT "0.7,0.3"']
    seeds = [0, 1, 2]
    for how in ("lift", "cached-lift"):
        got = cd.generate(world, exprs, seeds, steps=2, select=how, candidates=2)
        assert [[c for c, _, _ in t] for t in got.lifts] == [["0.3,0.3", "0.7,0.3"], ["0.5,0.5", "0.2,0.8"],
                                                              ["0.3,0.3", "0.7,0.3"]]
        assert all(math.isfinite(v) for t in got.lifts for _, _, v in t)
        # image 0 alone with its expression: the same choice (its candidates and scores depend on it alone)
        alone = cd.generate(world, exprs[0], [0], steps=2, select=how, candidates=2)
        assert alone.kept[0] == got.kept[0]
        assert [v for _, _, v in alone.lifts[0]] == pytest.approx([v for _, _, v in got.lifts[0]], rel=1e-3,
                                                                  abs=1e-3)
        assert torch.allclose(alone.images[0], got.images[0], atol=1e-4)


def test_bad_selection_arguments_are_input_errors_naming_them(world):
    bad = [({"select": "best"}, "select"), ({"select": "lift", "candidates": 0}, "candidates"),
           ({"select": "lift", "candidates": 65}, "candidates"), ({"select": "lift", "candidates": 2.0}, "candidates"),
           ({"candidates": 3}, "candidates"), ({"lift_options": {"draws": 2}}, "lift_options"),
           ({"select": "lift", "lift_options": {"draws": 0}}, "draws"),
           ({"select": "lift", "lift_options": {"times": [1000]}}, "times"),
           ({"select": "lift", "lift_options": {"weighting": "x"}}, "weighting"),
           ({"select": "lift", "lift_options": {"seed": 1}}, "lift_options"),
           ({"select": "cached-lift", "lift_options": {"draws": 2}}, "lift_options"),
           ({"select": "lift", "lift_options": [1]}, "lift_options")]
    for kwargs, name in bad:
        with pytest.raises(cd.InputError, match=name):
            cd.generate(world, EXPR, [0], steps=1, **kwargs)
    with pytest.raises(cd.InputError, match="select"):
        cd.generate(world, '"0.3,0.3":0', [0], steps=1, select="lift")
    with pytest.raises(cd.InputError, match="select"):
        sample_latents(world, EXPR, [0], steps=1, select="lift")


# ---- compdiff eval --select and the bench's summary -----------------------------------------------------
def test_eval_records_the_selection_and_its_cost(tmp_path):
    """compdiff eval --select lift --candidates 2 (a 32-pixel objects model trained 1 step, n = 3, 1 step):
    each cell records the kept candidates, their lift per asked concept and NOT, the judge's per-concept
    verdicts beside them, and the denoiser rows spent; bench/lift_selection.py's summary reads them."""
    import importlib.util
    import json
    from pathlib import Path

    from compdiff.cli import main
    from compdiff.training import TrainConfig, train

    model = train(TrainConfig(task="objects", out=str(tmp_path / "m"), resolution=32, batch_size=4,
                              channels=(16, 32), layers_per_block=1, precision="fp32", steps=1),
                  progress=False).model_dir
    base = ["eval", "--task", "objects", "--components", "1", "--n", "3", "--steps", "1", "--batch-size", "3",
            "--model", str(model), "--methods", "composed", "--not", "--no-progress", "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "r" / "objects" / "lift-M2"), "--select", "lift",
                        "--candidates", "2"]) == 0
    assert main(base + ["--out", str(tmp_path / "r" / "objects" / "plain"), "--select", "cached-lift",
                        "--candidates", "1"]) == 0
    cell = json.loads((tmp_path / "r" / "objects" / "lift-M2" / "results.json").read_text())["cells"]["composed/K1"]
    sel = cell["selection"]
    assert sel["select"] == "lift" and sel["candidates"] == 2 and all(k in (0, 1) for k in sel["kept"])
    assert [len(row) for row in sel["lift"]] == [2, 2, 2] and all(v is not None for r in sel["lift"] for v in r)
    assert sel["satisfied"] == [m > 0 for m in sel["margin"]] and len(cell["negative_success"]) == 3
    # 3 sets x 2 candidates x (1 + 2 conditions) rows for 1 step, plus the lift's 10 times of the same rows
    assert cell["lift_evals"] == 3 * 2 * 3 * 10 and cell["model_evals"] == 3 * 2 * 3 + cell["lift_evals"]
    spec = importlib.util.spec_from_file_location("lift_selection", Path(__file__).parent.parent / "bench" /
                                                  "lift_selection.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.summarize(tmp_path / "r")
    rows = {r["method"]: r for r in summary["selection"]}
    assert rows["plain"]["evals_per_image"] == 3 * 1  # plain: the sampling rows only (cached-lift adds none)
    assert rows["lift-M2"]["evals_per_image"] == cell["model_evals"] / 3
    (clf,) = summary["classifier"]
    assert clf["lift"] == "cached" and clf["pairs"] == 6 and 0 <= clf["agreement"] <= 1
    assert (tmp_path / "r" / "summary.md").read_text().count("| objects |") == 3
    assert bench.roc_auc([3.0, 2.0, 1.0, 0.0], [True, True, False, False]) == 1.0
    assert bench.roc_auc([1.0, 1.0], [True, False]) == 0.5 and bench.roc_auc([1.0], [True]) is None
