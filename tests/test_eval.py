"""compdiff eval end to end on tiny models; concept sets; resume."""
import json
import math

import pytest

from compdiff.cli import main
from compdiff.eval.composition import EvalSpec, Method, run_eval
from compdiff.eval.concept_sets import concept_sets
from compdiff.eval.judge import load_judge
from compdiff.models import load_model
from compdiff.training import TrainConfig, train
from compdiff.world import get_task

TINY = dict(resolution=32, batch_size=4, channels=(16, 32), layers_per_block=1, precision="fp32", steps=1)


@pytest.mark.parametrize("task", ["objects", "relations", "attributes"])
@pytest.mark.parametrize("negate", [False, True])
def test_concept_sets_are_jointly_satisfiable(task, negate):
    t = get_task(task)
    for k in (1, 2, 3):
        sets = concept_sets(t, k, 20, seed=3, negate=negate)
        assert len(sets) == 20
        for s in sets:
            assert len(s.positives) == k and len(set(s.positives)) == k
            assert all(t.holds(c, s.scene) for c in s.positives)
            if negate:
                assert s.negative is not None and not t.holds(s.negative, s.scene)
            assert s.satisfied_by(t, s.scene)
        assert concept_sets(t, k, 20, seed=3, negate=negate) == sets  # reruns draw the same sets


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    comp = train(TrainConfig(task="objects", out=str(root / "c"), **TINY), progress=False).model_dir
    # the joint baseline reads the set as tokens (no position map), as the paper's baseline reads a sentence
    joint = train(TrainConfig(task="objects", out=str(root / "j"), joint=True, spatial=False, cross_attention=True,
                              **TINY), progress=False).model_dir
    return str(comp), str(joint)


@pytest.fixture(scope="module")
def oracle_joint(tmp_path_factory):
    """A joint objects model that reads a bump map of every position of its set: an oracle layout."""
    root = tmp_path_factory.mktemp("oracle")
    return str(train(TrainConfig(task="objects", out=str(root / "o"), joint=True, **TINY), progress=False).model_dir)


def test_eval_cli_writes_reports(tiny_models, tmp_path, capsys):
    comp, joint = tiny_models
    out = tmp_path / "rep"
    rc = main(["eval", "--task", "objects", "--components", "1,2", "--n", "4", "--steps", "2", "--batch-size", "3",
               "--model", comp, "--joint-model", joint, "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["spec"]["components"] == [1, 2] and res["spec"]["n"] == 4
    assert set(res["cells"]) == {f"{m}/K{k}" for m in ("composed", "composed-mean", "joint") for k in (1, 2)}
    for cell in res["cells"].values():
        assert 0 <= cell["accuracy"] <= 1 and 0 <= cell["concept_accuracy"] <= 1
        assert len(cell["success"]) == 4 and cell["accuracy"] == sum(cell["success"]) / 4
        assert math.isfinite(cell["fd_judge"]) and cell["fd_judge"] >= 0 and cell["extra_objects"] >= 0
        assert cell["real_accuracy"] == 1.0  # the judge reads the real renders of the sets
        # the per-set record: what was asked, which concepts held, what the judge read
        assert [len(a) for a in cell["asked"]] == [cell["k"]] * 4
        assert [len(c) for c in cell["concept_success"]] == [cell["k"]] * 4
        assert cell["success"] == [all(c) for c in cell["concept_success"]]  # objects has no NOT here
        flat = [v for c in cell["concept_success"] for v in c]
        assert cell["concept_accuracy"] == sum(flat) / len(flat)
        assert len(cell["judged"]) == 4 and all(" at " in o for j in cell["judged"] for o in j)
    table = (out / "table.md").read_text()
    assert "| composed |" in table and "| joint |" in table and "K=2" in table
    for f in ("accuracy.png", "grid_composed_K1.png", "grid_joint_K2.png"):
        assert (out / f).stat().st_size > 1000
    assert "results.json" in capsys.readouterr().out


def test_eval_device(tiny_models, tmp_path, capsys):
    import torch

    comp, _ = tiny_models
    out = tmp_path / "rep"
    assert main(["eval", "--task", "objects", "--components", "1", "--n", "2", "--steps", "1", "--model", comp,
                 "--methods", "composed", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["cells"]["composed/K1"]["device"] == "cpu"
    for bad, needle in ([("tpu", "not a device")] + ([] if torch.cuda.is_available() else [("cuda", "sees no CUDA GPU")])):
        assert main(["eval", "--task", "objects", "--model", comp, "--device", bad, "--out", str(tmp_path / bad)]) == 2
        assert needle in capsys.readouterr().err and not (tmp_path / bad).exists()


def test_eval_not_sets_and_bad_input(tiny_models, tmp_path, capsys):
    comp, joint = tiny_models
    out = tmp_path / "rep"
    assert main(["eval", "--task", "objects", "--components", "1", "--n", "2", "--steps", "1", "--not",
                 "--model", comp, "--methods", "composed", "--out", str(out), "--no-progress"]) == 0
    cell = json.loads((out / "results.json").read_text())["cells"]["composed/K1"]
    assert 0 <= cell["negated_absent"] <= 1
    assert main(["eval", "--task", "objects", "--not", "--model", comp, "--joint-model", joint,
                 "--out", str(tmp_path / "x")]) == 2
    assert "no NOT" in capsys.readouterr().err
    assert main(["eval", "--task", "objects", "--model", comp, "--joint-model", comp, "--methods", "joint",
                 "--out", str(tmp_path / "y")]) == 2
    assert "not a joint-conditioning model" in capsys.readouterr().err


def test_the_oracle_layout_joint_is_its_own_labelled_method(tiny_models, oracle_joint, tmp_path, capsys):
    comp, joint = tiny_models
    base = ["eval", "--task", "objects", "--components", "1", "--n", "2", "--steps", "1", "--model", comp,
            "--no-progress"]
    # a joint model that reads the position map is refused as 'joint', and a token one as 'joint-oracle'
    assert main(base + ["--joint-model", oracle_joint, "--methods", "joint", "--out", str(tmp_path / "a")]) == 2
    assert "--oracle-joint-model" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(base + ["--oracle-joint-model", joint, "--methods", "joint-oracle", "--out", str(tmp_path / "b")]) == 2
    assert "reads no position map" in capsys.readouterr().err
    assert main(base + ["--methods", "joint-oracle", "--out", str(tmp_path / "c")]) == 2
    assert "--oracle-joint-model DIR" in capsys.readouterr().err
    # both baselines in one report, as separate rows
    out = tmp_path / "rep"
    assert main(base + ["--joint-model", joint, "--oracle-joint-model", oracle_joint, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["cells"]) == {"composed/K1", "composed-mean/K1", "joint/K1", "joint-oracle/K1"}
    assert res["methods"]["joint"]["reads"] == "tokens"
    assert res["methods"]["joint-oracle"]["reads"] == "tokens and a map of every position"
    assert "| joint-oracle |" in (out / "table.md").read_text()


class Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, x, t, c):
        self.calls += 1
        return self.inner(x, t, c)


def test_resume_skips_finished_cells(tiny_models, tmp_path):
    comp, _ = tiny_models
    m = load_model(comp)
    den = Counting(m.denoiser)
    methods = {"composed": Method("composed", den, m.encoder, "sum", False, m.schedule)}
    spec = EvalSpec(task="objects", components=(1, 2), n=2, steps=2, batch_size=2, methods=("composed",))
    judge = load_judge(32)
    run_eval(spec, methods, judge, tmp_path, 32, progress=False)
    assert den.calls == 2 * 2  # two cells, one batch each, two steps
    run_eval(spec, methods, judge, tmp_path, 32, progress=False)
    assert den.calls == 4  # nothing recomputed
    res = json.loads((tmp_path / "results.json").read_text())
    del res["cells"]["composed/K2"]
    (tmp_path / "results.json").write_text(json.dumps(res))
    run_eval(spec, methods, judge, tmp_path, 32, progress=False)
    assert den.calls == 6  # only the missing cell
    with pytest.raises(ValueError, match="other settings"):
        run_eval(EvalSpec(task="objects", components=(1,), n=3, steps=2, methods=("composed",)), methods, judge,
                 tmp_path, 32, progress=False)


def test_resume_can_add_a_method(tiny_models, tmp_path):
    comp, _ = tiny_models
    m = load_model(comp)
    judge = load_judge(32)
    mk = lambda name, mode: {name: Method(name, Counting(m.denoiser), m.encoder, mode, False, m.schedule)}  # noqa: E731
    base = dict(task="objects", components=(1,), n=2, steps=1, batch_size=2)
    run_eval(EvalSpec(methods=("composed",), **base), mk("composed", "sum"), judge, tmp_path, 32, progress=False)
    res = run_eval(EvalSpec(methods=("composed-mean",), **base), mk("composed-mean", "mean"), judge, tmp_path, 32,
                   progress=False)
    assert set(res["cells"]) == {"composed/K1", "composed-mean/K1"}
    assert res["spec"]["methods"] == ["composed", "composed-mean"]


def test_eval_with_perp_negation_and_a_corrector(tiny_models, tmp_path):
    comp, _ = tiny_models
    m = load_model(comp)
    den = Counting(m.denoiser)
    methods = {"composed": Method("composed", den, m.encoder, "sum", False, m.schedule)}
    spec = EvalSpec(task="objects", components=(1,), n=2, steps=4, batch_size=2, negate=True, negation="perp",
                    correct="ula", corrector_steps=1, methods=("composed",))
    res = run_eval(spec, methods, load_judge(32), tmp_path, 32, progress=False)
    assert res["spec"]["negation"] == "perp" and res["spec"]["correct"] == "ula"
    assert den.calls == 4 + 2  # 4 steps, plus one corrector evaluation on each of the 2 cleaner levels


def test_wilson_interval():
    from compdiff.eval.stats import wilson

    lo, hi = wilson(0, 64)
    assert lo == 0.0 and 0.05 < hi < 0.06  # 0 of 64: [0, 5.7%]
    lo, hi = wilson(29, 64)  # 45.3%: about 33.7–57.5%
    assert abs(lo - 0.337) < 0.005 and abs(hi - 0.575) < 0.005
    assert wilson(64, 64)[1] == 1.0 and wilson(5, 0) == (0.0, 1.0)


def test_a_report_of_the_old_sets_is_not_resumed(tiny_models, tmp_path):
    """A report written before sets version 2 (no sets_version in its spec) drew other sets: adding
    cells to it would compare methods on different sets, so it is refused."""
    comp, _ = tiny_models
    m = load_model(comp)
    methods = {"composed": Method("composed", m.denoiser, m.encoder, "sum", False, m.schedule)}
    spec = EvalSpec(task="objects", components=(1,), n=2, steps=1, batch_size=2, methods=("composed",))
    run_eval(spec, methods, load_judge(32), tmp_path, 32, progress=False)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["spec"]["sets_version"] == 2
    del res["spec"]["sets_version"]
    (tmp_path / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="sets version 1"):
        run_eval(spec, methods, load_judge(32), tmp_path, 32, progress=False)
