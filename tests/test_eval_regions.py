"""Region evaluation on the described task (eval/concept_sets.py, eval/composition.py, cli/eval.py).

The box rule (side ``region_size`` around the real object, moved inside the image, 3 decimals),
the expression method ``composed-regions`` writes, the ``in_region`` metric on hand-built
scenes, the report columns, the refusal on tasks whose concepts are not single objects, and
``compdiff eval`` end to end on a tiny model.
"""
import json
import math

import pytest
import torch

from compdiff.cli import main
from compdiff.errors import InputError
from compdiff.eval.composition import EvalSpec, Method, generate, region_metrics, run_eval, write_reports
from compdiff.eval.concept_sets import (REGION_SIZE, ConceptSet, check_regions, concept_sets, format_box,
                                        region_box, region_tasks)
from compdiff.world import Obj, Scene, get_task
from compdiff.world.tasks import Desc

T = get_task("described")
RED_CUBE, BLUE_BALL = Desc("cube", "red", "small", "metal"), Desc("sphere", "blue", "large", "rubber")


def obj(d: Desc, x: float, y: float) -> Obj:
    return Obj(d.shape, d.color, d.size, d.material, x, y)


def two_object_set(negative: Desc | None = None) -> ConceptSet:
    scene = Scene((obj(RED_CUBE, 0.2, 0.3), obj(BLUE_BALL, 0.9, 0.85)))
    return ConceptSet((RED_CUBE, BLUE_BALL), negative, scene)


# ---- the box rule -------------------------------------------------------------------------
def test_region_box_is_centred_and_rounded():
    assert REGION_SIZE == 0.4 and EvalSpec(task="described").region_size == 0.4
    assert region_box(0.5, 0.5) == (0.3, 0.3, 0.7, 0.7)
    assert region_box(0.5, 0.5, 0.2) == (0.4, 0.4, 0.6, 0.6)
    assert region_box(0.51234, 0.45678, 0.4) == (0.312, 0.257, 0.712, 0.657)
    assert region_box(0.5, 0.5, 1.0) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("x,y,want", [
    (0.1, 0.5, (0.0, 0.3, 0.4, 0.7)),     # left edge: shifted right
    (0.95, 0.5, (0.6, 0.3, 1.0, 0.7)),    # right edge: shifted left
    (0.5, 0.05, (0.3, 0.0, 0.7, 0.4)),    # top
    (0.02, 0.99, (0.0, 0.6, 0.4, 1.0)),   # bottom-left corner
])
def test_clamping_moves_the_box_and_keeps_its_size(x, y, want):
    assert region_box(x, y) == want


def test_every_box_keeps_its_size_and_holds_its_centre():
    for size in (0.1, 0.25, 0.4, 0.75):
        for i in range(41):
            for j in range(41):
                x, y = i / 40, j / 40
                x0, y0, x1, y1 = b = region_box(x, y, size)
                assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
                assert math.isclose(x1 - x0, size, abs_tol=1e-9) and math.isclose(y1 - y0, size, abs_tol=1e-9)
                assert x0 - 5e-4 <= x <= x1 + 5e-4 and y0 - 5e-4 <= y <= y1 + 5e-4, (x, y, b)
                assert all(round(v, 3) == v for v in b)
    with pytest.raises(InputError, match="region size"):
        region_box(0.5, 0.5, 0.0)


# ---- the expression of composed-regions ---------------------------------------------------
BOXED = ('"a small red metal cube" @ (0.000, 0.100, 0.400, 0.500) AND '
         '"a large blue rubber sphere" @ (0.600, 0.600, 1.000, 1.000)')


def test_expressions_with_and_without_boxes():
    s = two_object_set()
    assert s.boxes(T) == ((0.0, 0.1, 0.4, 0.5), (0.6, 0.6, 1.0, 1.0))
    assert format_box(s.boxes(T)[0]) == "@ (0.000, 0.100, 0.400, 0.500)"
    assert s.expression(T) == '"a small red metal cube" AND "a large blue rubber sphere"'
    assert s.expression(T, regions=0.4) == BOXED
    neg = two_object_set(Desc(color="green"))
    assert neg.expression(T, regions=0.4) == BOXED + ' AND NOT "a green thing"'  # NOT: everywhere
    composed, regions = Method("composed", None, None), Method("composed-regions", None, None, regions=True)
    assert composed.expression(T, s) == s.expression(T)
    assert regions.expression(T, s) == BOXED and regions.expression(T, s, 0.2).startswith(
        '"a small red metal cube" @ (0.100, 0.200, 0.300, 0.400) AND')
    with pytest.raises(InputError, match="no regions"):
        Method("joint", None, None, joint=True, regions=True).expression(T, s)


def test_drawn_sets_box_their_own_objects():
    for k in (1, 2, 3):
        for s in concept_sets(T, k, 20, seed=5):
            for c, (x0, y0, x1, y1) in zip(s.positives, s.boxes(T)):
                o = next(o for o in s.scene.objects if c.matches(o))
                assert x0 - 5e-4 <= o.x <= x1 + 5e-4 and y0 - 5e-4 <= o.y <= y1 + 5e-4
            assert s.expression(T, REGION_SIZE).count(" @ (") == k
            # the real scene scores in its own boxes (up to the 3-decimal rounding at an edge)
            assert s.in_region(T, s.scene) == [True] * k


def test_the_grammar_reads_the_boxes_back():
    from compdiff.expr import parse

    terms = parse(BOXED).terms()
    assert [t.concept for t in terms] == ["a small red metal cube", "a large blue rubber sphere"]
    regions = [t.region for t in terms]
    assert all(r is not None for r in regions)
    text = str(parse(BOXED))
    assert "0.4" in text and "@" in text


# ---- in_region ------------------------------------------------------------------------------
def test_an_object_outside_its_box_passes_accuracy_and_fails_in_region():
    s = two_object_set()
    inside = Scene((obj(RED_CUBE, 0.25, 0.35), obj(BLUE_BALL, 0.8, 0.8)))
    moved = Scene((obj(RED_CUBE, 0.75, 0.3), obj(BLUE_BALL, 0.8, 0.8)))  # the cube is right, its box left
    swapped = Scene((obj(RED_CUBE, 0.8, 0.8), obj(BLUE_BALL, 0.2, 0.3)))  # both present, both misplaced
    twin = Scene((obj(RED_CUBE, 0.75, 0.3), obj(RED_CUBE, 0.3, 0.3), obj(BLUE_BALL, 0.8, 0.8)))  # one in place
    wrong = Scene((obj(Desc("cube", "green", "small", "metal"), 0.2, 0.3), obj(BLUE_BALL, 0.8, 0.8)))
    assert s.satisfied_by(T, inside) and s.in_region(T, inside) == [True, True]
    assert s.satisfied_by(T, moved) and s.in_region(T, moved) == [False, True]
    assert s.satisfied_by(T, swapped) and s.in_region(T, swapped) == [False, False]
    assert s.in_region(T, twin) == [True, True]
    # a green cube in the red cube's box: neither accuracy nor in_region
    assert not s.satisfied_by(T, wrong) and s.in_region(T, wrong) == [False, True]
    # the box edge counts as inside
    assert s.in_region(T, Scene((obj(RED_CUBE, 0.4, 0.5), obj(BLUE_BALL, 0.6, 0.6)))) == [True, True]
    sets = [s, s, s, s]
    m = region_metrics(T, sets, [inside, moved, swapped, wrong], REGION_SIZE)
    assert m == {"in_region": 0.25, "per_concept_in_region": 4 / 8}
    assert region_metrics(T, sets[:1], [inside], 0.05) == {"in_region": 0.0, "per_concept_in_region": 0.0}


# ---- tasks without regions -----------------------------------------------------------------
MESSAGE = "composed-regions needs a task whose concepts are single objects: described"


def test_region_methods_refuse_other_tasks(tmp_path, capsys):
    assert region_tasks() == ["described"]
    check_regions(T)
    for name in ("objects", "relations", "attributes"):
        with pytest.raises(InputError, match=MESSAGE):
            check_regions(get_task(name))
    methods = {"composed-regions": Method("composed-regions", None, None, regions=True)}
    with pytest.raises(InputError, match=MESSAGE):
        run_eval(EvalSpec(task="relations", methods=("composed-regions",)), methods, None, tmp_path / "rep", 32)
    assert not (tmp_path / "rep").exists()
    out = tmp_path / "cli"
    assert main(["eval", "--task", "objects", "--methods", "composed,composed-regions", "--out", str(out)]) == 2
    assert MESSAGE in capsys.readouterr().err and not out.exists()
    assert main(["eval", "--task", "described", "--region-size", "0", "--out", str(out)]) == 2
    assert "--region-size" in capsys.readouterr().err and not out.exists()


# ---- reports -------------------------------------------------------------------------------
def cell(method: str, k: int, **extra) -> dict:
    return {"k": k, "method": method, "accuracy": 0.5, "concept_accuracy": 0.75, "success": [True, False],
            "fd_judge": 1.0, "fd_floor": 0.5, "real_accuracy": 1.0, **extra}


def test_report_columns(tmp_path):
    spec = {"task": "described", "n": 2, "sampler": "ddim", "steps": 2, "guidance_scale": 3.0, "negate": False,
            "region_size": 0.4}
    cells = {f"{m}/K{k}": cell(m, k, in_region=0.5 if m == "composed" else 1.0, per_concept_in_region=0.75)
             for m in ("composed", "composed-regions") for k in (1, 2)}
    write_reports({"spec": spec, "cells": cells}, tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "In region = every concept holds with its object's centre inside its box (side 0.4" in table
    assert "| composed | 50.0% | 50.0% |" in table and "| composed-regions | 100.0% | 100.0% |" in table
    assert "| judge on real renders | in region | per-concept in region |" in table
    assert "| composed-regions | 2 | 50.0% |" in table and table.count("| 100.0% | 75.0% |") == 2
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    # objects' table keeps its one extra column, as before
    spec["task"] = "objects"
    write_reports({"spec": spec, "cells": {"composed/K1": cell("composed", 1, extra_objects=0.25)}}, tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "In region" not in table and table.rstrip().endswith("| 100.0% | 0.25 |")
    assert "| judge on real renders | extra objects |\n|---|---|---|---|---|---|---|---|---|\n" in table


# ---- end to end ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_described(tmp_path_factory):
    from compdiff.training import TrainConfig, train

    cfg = TrainConfig(task="described", out=str(tmp_path_factory.mktemp("described") / "m"), resolution=32,
                      batch_size=4, channels=(16, 32), layers_per_block=1, precision="fp32", steps=1)
    return str(train(cfg, progress=False).model_dir)


def run_cli_eval(model: str, out, methods: str) -> dict:
    assert main(["eval", "--task", "described", "--methods", methods, "--n", "4", "--components", "2", "--steps",
                 "2", "--batch-size", "4", "--model", model, "--out", str(out), "--no-progress"]) == 0
    return json.loads((out / "results.json").read_text())


def test_eval_scores_in_region_for_every_method(tiny_described, tmp_path):
    res = run_cli_eval(tiny_described, tmp_path / "rep", "composed")
    c = res["cells"]["composed/K2"]
    assert res["spec"]["region_size"] == 0.4 and "regions" not in res["methods"]["composed"]
    assert 0 <= c["in_region"] <= c["accuracy"] <= 1 and 0 <= c["per_concept_in_region"] <= c["concept_accuracy"]
    assert c["real_accuracy"] == 1.0
    assert "in region" in (tmp_path / "rep" / "table.md").read_text()


def test_eval_composed_regions_end_to_end(tiny_described, tmp_path):
    res = run_cli_eval(tiny_described, tmp_path / "rep", "composed,composed-regions")
    assert set(res["cells"]) == {"composed/K2", "composed-regions/K2"}
    assert res["methods"]["composed-regions"]["regions"] is True
    for c in res["cells"].values():
        assert 0 <= c["in_region"] <= c["accuracy"] <= 1 and len(c["success"]) == 4
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "| composed-regions |" in table and "in region" in table
    # the boxes reach the sampler: the same noise, other images
    from compdiff.models import load_model

    m = load_model(tiny_described)
    spec = EvalSpec(task="described", components=(2,), n=2, steps=2, batch_size=2)
    sets = concept_sets(T, 2, 2, spec.seed)
    plain, boxed = (generate(Method(name, m.denoiser, m.encoder, schedule=m.schedule, regions=regions), T, sets,
                             spec, (3, 32, 32)) for name, regions in (("composed", False), ("composed-regions", True)))
    assert plain.shape == boxed.shape and not torch.equal(plain, boxed)


def test_feather_and_region_mode_reach_the_sampler(tiny_described, tmp_path):
    """--feather and --region-mode change composed-regions' images (same sets and noise), are recorded in
    the spec, and a report resumes only with the same values."""
    from compdiff.models import load_model

    m = load_model(tiny_described)
    method = Method("composed-regions", m.denoiser, m.encoder, schedule=m.schedule, regions=True)
    sets = concept_sets(T, 2, 2, 7)
    hard, soft, shared = (generate(method, T, sets, EvalSpec(task="described", components=(2,), n=2, steps=2,
                                                            batch_size=2, **kw), (3, 32, 32))
                          for kw in ({}, {"feather": 0.2}, {"region_mode": "normalize", "region_size": 0.9}))
    assert not torch.equal(hard, soft)
    # large boxes overlap: sharing the guidance there changes the images
    big = generate(method, T, sets, EvalSpec(task="described", components=(2,), n=2, steps=2, batch_size=2,
                                              region_size=0.9), (3, 32, 32))
    assert not torch.equal(big, shared)
    out = tmp_path / "rep"
    argv = ["eval", "--task", "described", "--methods", "composed-regions", "--n", "2", "--components", "2",
            "--steps", "1", "--batch-size", "2", "--model", tiny_described, "--out", str(out), "--no-progress"]
    assert main(argv + ["--feather", "0.1", "--region-mode", "normalize"]) == 0
    spec = json.loads((out / "results.json").read_text())["spec"]
    assert spec["feather"] == 0.1 and spec["region_mode"] == "normalize"
    assert main(argv + ["--feather", "0.2"]) == 2  # other settings: not mixed into the same report
