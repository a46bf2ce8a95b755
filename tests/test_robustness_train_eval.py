"""Hostile input to ``train`` and ``eval``: every bad option exits 2 with one complete line and
leaves nothing behind; damaged model folders are named; --overwrite deletes only what compdiff
wrote; a kill -9 during the model export leaves a loadable, resumable run; pickled pipeline
weights are refused without torch.load."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compdiff
from compdiff.backends import DiffusersBackend
from compdiff.cli import UsageError, build_parser, main
from compdiff.errors import InputError
from compdiff.models import load_model
from compdiff.training import TrainConfig, train
from compdiff.training.checkpoint import latest_checkpoint, load_checkpoint

TINY = dict(task="objects", resolution=16, batch_size=4, channels=(16, 32), layers_per_block=1,
            precision="fp32", warmup=2, log_every=1)
TINY_ARGS = ["--task", "objects", "--resolution", "16", "--batch-size", "4", "--channels", "16,32",
             "--layers-per-block", "1", "--precision", "fp32", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
PREFIX = "compdiff: error: "


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 16x16 objects model (1 step): the source of the damaged copies."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    return train(TrainConfig(out=str(run), steps=1, **TINY), progress=False).model_dir


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _assert_clean_exit_2(rc: int, err: str, needle: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    first = err.splitlines()[0] if err else ""
    assert first.startswith(PREFIX) and len(first) > len(PREFIX) + 10, err
    assert needle in first, (needle, first)
    return first


# ---- the table of bad invocations ------------------------------------------------------------

def _meta(d: Path) -> dict:
    return json.loads((d / "compdiff.json").read_text())


def _set_meta(d: Path, meta: dict) -> None:
    (d / "compdiff.json").write_text(json.dumps(meta))


DAMAGE = {  # how to damage a copy of a model folder; what the first line says right after the folder's name
    "list-json": (lambda d: (d / "compdiff.json").write_text("[1, 2]"), "/compdiff.json: expected a JSON object"),
    "no-model-key": (lambda d: _set_meta(d, {k: v for k, v in _meta(d).items() if k != "model"}),
                     "/compdiff.json: no 'model' entry"),
    "bad-json": (lambda d: (d / "compdiff.json").write_text("{oops"), "/compdiff.json: not readable JSON"),
    "no-unet": (lambda d: shutil.rmtree(d / "unet"), ": the unet/ folder"),
    "channels-mismatch": (lambda d: _set_meta(d, {**_meta(d), "model": {**_meta(d)["model"], "channels": [32, 64]}}),
                          "/unet/diffusion_pytorch_model.safetensors does not fit"),
    "no-channels-key": (lambda d: _set_meta(d, {**_meta(d), "model": {
        k: v for k, v in _meta(d)["model"].items() if k != "channels"}}), "/compdiff.json: 'model' lacks the key"),
    "no-cond-weights": (lambda d: (d / "cond_embed.safetensors").unlink(), ": cond_embed.safetensors is missing"),
    "truncated-weights": (lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10" * 64),
                          "/unet/diffusion_pytorch_model.safetensors: not a readable safetensors file"),
    "unet-config-differs": (lambda d: (d / "unet" / "config.json").write_text(json.dumps(
        {**json.loads((d / "unet" / "config.json").read_text()), "block_out_channels": [32, 64]})),
        "/unet/config.json: block_out_channels"),
}

TRAIN_CASES = [  # extra flags (the last occurrence of a flag wins), a word the first line must hold
    (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "2"], "--lr"),
    (["--ema-decay", "2"], "--ema-decay"), (["--ema-decay", "nan"], "--ema-decay"),
    (["--warmup", "-5"], "--warmup"), (["--warmup", "1e3"], "--warmup"),
    (["--null-prob", "1"], "--null-prob"), (["--null-prob", "nan"], "--null-prob"),
    (["--null-prob", "-0.1"], "--null-prob"),
    (["--resolution", "65536"], "--resolution"), (["--resolution", "4"], "--resolution"),
    (["--channels", "16,32,64", "--resolution", "30"], "--resolution"),
    (["--batch-size", "10000000"], "--batch-size"), (["--batch-size", "0"], "--batch-size"),
    (["--channels", "7,14"], "--channels"), (["--channels", "16,x"], "--channels"), (["--channels", ""], "--channels"),
    (["--channels", "8,8,8,8,8,8,8"], "--channels"), (["--channels", "16,4096"], "--channels"),
    (["--layers-per-block", "0"], "--layers-per-block"), (["--layers-per-block", "1000"], "--layers-per-block"),
    (["--steps", "0"], "--steps"), (["--steps", "100000000000"], "--steps"), (["--seed", "-1"], "--seed"),
    (["--data-workers", "1000"], "--data-workers"), (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--log-every", "-3"], "--log-every"), (["--snapshot-every", "-1"], "--snapshot-every"),
    (["--max-objects", "9"], "--max-objects"), (["--max-objects", "0"], "--max-objects"),
    (["--resume"], "--resume"),
    (["--resume", "--overwrite"], "--resume"),
]

EVAL_CASES = [
    (["--n", "1000000000"], "--n"), (["--n", "0"], "--n"), (["--components", "0"], "--components"),
    (["--components", "-1"], "--components"), (["--components", "1000"], "--components"),
    (["--components", "1,6"], "--components"), (["--components", "1,x"], "--components"),
    (["--guidance-scale", "nan"], "--guidance-scale"), (["--guidance-scale", "1e9"], "--guidance-scale"),
    (["--corrector-steps", "1000000000"], "--corrector-steps"), (["--corrector-steps", "0"], "--corrector-steps"),
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "100000"], "--batch-size"),
    (["--eta", "nan"], "--eta"), (["--eta", "-1"], "--eta"), (["--rescale", "2"], "--rescale"),
    (["--steps", "0"], "--steps"), (["--steps", "1000000"], "--steps"), (["--seed", "-5"], "--seed"),
    (["--methods", "joint"], "--joint-model"), (["--methods", "composed,magic"], "magic"),
]


def _train_argv(tmp: Path, extra: list[str]) -> list[str]:
    return ["train", *TINY_ARGS, "--steps", "1", "--out", str(tmp / "run"), *extra]


def _eval_argv(tmp: Path, extra: list[str]) -> list[str]:
    return ["eval", "--task", "objects", "--components", "1", "--n", "2", "--steps", "1", "--no-progress",
            "--out", str(tmp / "rep"), *extra]


CASES = ([pytest.param("train", extra, needle, None, id="train" + "".join(extra)) for extra, needle in TRAIN_CASES]
         + [pytest.param("eval", extra, needle, None, id="eval" + "".join(extra)) for extra, needle in EVAL_CASES]
         + [pytest.param(cmd, [], needle, name, id=f"{cmd}-model-{name}")
            for name, (_, needle) in DAMAGE.items() for cmd in ("sample", "eval")])


@pytest.mark.parametrize("cmd, extra, needle, damage", CASES)
def test_bad_invocations_exit_2_with_one_line_and_leave_nothing(cmd, extra, needle, damage, tiny_model, tmp_path,
                                                                 capsys):
    if damage is not None:
        model = tmp_path / f"damaged-{damage}"
        shutil.copytree(tiny_model, model)
        DAMAGE[damage][0](model)
        argv = (["sample", '"0.3,0.5"', "--steps", "1", "--no-progress", "--out", str(tmp_path / "x.png")]
                if cmd == "sample" else _eval_argv(tmp_path, []))
        argv += ["--model", str(model)]
        needle = model.name + needle  # the file is named
    else:
        argv = (_train_argv if cmd == "train" else _eval_argv)(tmp_path, extra)
    before = _listing(tmp_path)
    rc = main(argv)
    _assert_clean_exit_2(rc, capsys.readouterr().err, needle)
    assert _listing(tmp_path) == before  # no run.json, no report folder, no png


def test_the_table_is_large_enough():
    assert len(CASES) >= 25


def test_the_cli_limits_are_train_configs_limits():
    """The parse-time ranges of `train` and TrainConfig.validate's agree (both ends of each)."""
    from compdiff.training.loop import LIMITS

    parser = build_parser()
    base = ["train", "--task", "objects", "--out", "x"]
    for name, (lo, hi) in LIMITS.items():
        flag = "--" + name.replace("_", "-")
        for good in (lo, hi):
            assert getattr(parser.parse_args([*base, flag, str(good)]), name) == good
        for bad in (lo - 1, hi + 1):
            with pytest.raises(UsageError, match=flag):
                parser.parse_args([*base, flag, str(bad)])
            with pytest.raises(InputError, match=flag):
                TrainConfig(task="objects", out="x", **{name: bad}).validate()
    # the help states the limits
    commands = parser._subparsers._group_actions[0].choices
    train_help, eval_help = (" ".join(commands[c].format_help().split()) for c in ("train", "eval"))
    assert "1..4096" in train_help and "8..512" in train_help and "(0, 1]" in train_help
    assert "2..100,000" in eval_help and "1..100" in eval_help and "task's largest" in eval_help


def test_the_python_api_validates_before_writing(tmp_path):
    out = tmp_path / "run"
    for bad in (dict(lr=float("nan")), dict(channels=(7, 14)), dict(ema_decay=2.0), dict(layers_per_block=0)):
        with pytest.raises(InputError):
            train(TrainConfig(out=str(out), steps=1, **{**TINY, **bad}), progress=False)
        assert not out.exists()


@pytest.mark.parametrize("argv", [_train_argv, _eval_argv])
def test_an_out_that_is_a_file_is_refused(argv, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc = main([*argv(tmp_path, []), "--out", str(tmp_path / "f")])
    _assert_clean_exit_2(rc, capsys.readouterr().err, "is a file")
    assert _listing(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "x"


def test_eval_refuses_a_model_the_judge_cannot_read(tiny_model, tmp_path, capsys):
    rc = main(_eval_argv(tmp_path, ["--model", str(tiny_model)]))
    _assert_clean_exit_2(rc, capsys.readouterr().err, "16x16")
    assert not (tmp_path / "rep").exists()


# ---- --overwrite ------------------------------------------------------------------------------

def test_train_overwrite_never_touches_a_foreign_folder(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("DATA")
    for flags in ([], ["--overwrite"]):
        rc = main(["train", *TINY_ARGS, "--steps", "1", "--out", str(precious), *flags])
        first = _assert_clean_exit_2(rc, capsys.readouterr().err, "thesis.txt")
        assert str(precious) in first and "not a compdiff training run" in first
        assert "--overwrite" not in first  # it would not help: never suggested for a foreign folder
        assert _listing(precious) == ["thesis.txt"] and (precious / "thesis.txt").read_text() == "DATA"


def test_train_overwrite_refuses_a_run_holding_other_files(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--steps", "1", "--out", str(run)]) == 0
    (run / "model" / "notes.md").write_text("mine")
    before = _listing(run)
    rc = main(["train", *TINY_ARGS, "--steps", "2", "--out", str(run), "--overwrite"])
    first = _assert_clean_exit_2(rc, capsys.readouterr().err, "model/notes.md")
    assert str(run) in first
    assert _listing(run) == before and (run / "model" / "notes.md").read_text() == "mine"
    # without --overwrite, the hint does not offer it either (only --resume, which deletes nothing)
    rc = main(["train", *TINY_ARGS, "--steps", "2", "--out", str(run)])
    first = _assert_clean_exit_2(rc, capsys.readouterr().err, "--resume")
    assert "or --overwrite" not in first


def test_train_overwrite_replaces_a_real_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--steps", "2", "--snapshot-every", "1", "--out", str(run)]) == 0
    assert (run / "snapshots" / "step-0000001" / "compdiff.json").is_file()
    assert main(["train", *TINY_ARGS, "--steps", "1", "--out", str(run), "--overwrite"]) == 0
    assert not (run / "snapshots").exists()  # the old run is gone, all of it
    assert load_checkpoint(latest_checkpoint(run))["step"] == 1
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert json.loads((run / "run.json").read_text())["steps"] == 1
    assert load_model(run / "model").config.resolution == 16


EVAL_OK = ["eval", "--task", "objects", "--components", "1", "--n", "2", "--steps", "1", "--batch-size", "2",
           "--methods", "composed", "--no-progress"]


def test_eval_overwrite_guard(tmp_path, capsys):
    # a foreign folder: refused with or without --overwrite, its files intact
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "table.md").write_text("my table")
    for flags in ([], ["--overwrite"]):
        rc = main([*EVAL_OK, "--out", str(precious), *flags])
        first = _assert_clean_exit_2(rc, capsys.readouterr().err, "table.md")
        assert str(precious) in first and "or --overwrite" not in first
        assert (precious / "table.md").read_text() == "my table" and _listing(precious) == ["table.md"]
    # a real report: replaced, and a grid of the earlier evaluation does not survive
    rep = tmp_path / "rep"
    assert main([*EVAL_OK, "--out", str(rep)]) == 0
    (rep / "grid_composed_K9.png").write_bytes(b"old")
    assert main([*EVAL_OK, "--seed", "8", "--out", str(rep), "--overwrite"]) == 0
    assert not (rep / "grid_composed_K9.png").exists()
    assert json.loads((rep / "results.json").read_text())["spec"]["seed"] == 8
    # a report holding a file compdiff did not write: refused, nothing deleted
    (rep / "notes.txt").write_text("mine")
    before = _listing(rep)
    rc = main([*EVAL_OK, "--seed", "9", "--out", str(rep), "--overwrite"])
    _assert_clean_exit_2(rc, capsys.readouterr().err, "notes.txt")
    assert _listing(rep) == before


# ---- kill -9 during the export ----------------------------------------------------------------

KILLER = r"""
import os, signal, sys
from pathlib import Path
import compdiff.models as models
import compdiff.atomic as ck  # the directory swap

stage = sys.argv[1]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if stage == "mid-write":  # the new model half written: unet/ done, condition weights next
    real_save_file = models.save_file
    def save_file(*a, **k):
        real_save_file(*a, **k)
        die()
    models.save_file = save_file
elif stage == "after-swap":  # new and old swapped, the old one not yet deleted (only its own files are)
    real_remove = ck.remove_written
    def remove_written(p, *a, **k):
        if Path(p).name.startswith("model.tmp-"):
            die()
        return real_remove(p, *a, **k)
    ck.remove_written = remove_written
elif stage == "between-renames":  # a file system without RENAME_EXCHANGE: old moved aside, new not yet in
    ck._exchange = lambda a, b: False
    real_rename = os.rename
    def rename(src, dst):
        if Path(dst).name == "model" and Path(src).name.startswith("model.tmp-"):
            die()
        return real_rename(src, dst)
    ck.os.rename = rename
from compdiff.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _model_steps(model_dir: Path) -> int:
    """The training steps of the model load_model(model_dir) loads."""
    from compdiff.atomic import interrupted_dir

    load_model(model_dir)
    found = model_dir if model_dir.is_dir() else interrupted_dir(model_dir)
    return json.loads((found / "compdiff.json").read_text())["training"]["steps"]


def test_kill_9_during_the_export_leaves_a_loadable_resumable_run(tmp_path):
    base = tmp_path / "base"
    assert main(["train", *TINY_ARGS, "--steps", "2", "--out", str(base)]) == 0
    stages = {"mid-write": 2, "after-swap": 3, "between-renames": 3}  # the model to find after the kill
    procs = {}
    for stage in stages:  # in parallel: the start-up (imports) dominates
        shutil.copytree(base, tmp_path / stage)
        procs[stage] = subprocess.Popen(
            [sys.executable, "-c", KILLER, stage, "train", *TINY_ARGS, "--steps", "3", "--resume",
             "--out", str(tmp_path / stage)], env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
    for stage, want in stages.items():
        _, err = procs[stage].communicate(timeout=600)
        assert procs[stage].returncode == -signal.SIGKILL, err[-2000:]
        run = tmp_path / stage
        assert load_checkpoint(latest_checkpoint(run))["step"] == 3
        if stage != "between-renames":
            assert (run / "model").is_dir()  # never missing where the folders can be swapped
        assert _model_steps(run / "model") == want  # load_model(run/model) works
        assert compdiff.open_model(run / "model").task == "objects"  # and so do sample/eval --model run/model
        assert main(["train", *TINY_ARGS, "--steps", "4", "--out", str(run), "--resume"]) == 0
        assert _model_steps(run / "model") == 4
        assert sorted(p.name for p in run.iterdir() if p.name.startswith("model")) == ["model"]  # leftovers gone


def test_replace_dir_falls_back_to_two_renames(tmp_path, monkeypatch):
    import compdiff.atomic as ck

    target = tmp_path / "model"
    for version in ("a", "b"):
        tmp = ck.tmp_dir_for(target)
        tmp.mkdir()
        (tmp / "v").write_text(version)
        ck.replace_dir(tmp, target)
        assert (target / "v").read_text() == version
        monkeypatch.setattr(ck, "_exchange", lambda a, b: False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ---- pickled diffusers pipelines ------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    import sd_tiny

    folder = tmp_path_factory.mktemp("sd") / "pipe"
    sd_tiny.save_pipeline(folder)
    return folder


def _pickle(folder: Path, component: str) -> None:
    from safetensors.torch import load_file

    for f in (folder / component).glob("*.safetensors"):
        name = "pytorch_model.bin" if f.name == "model.safetensors" else f.with_suffix(".bin").name
        torch.save(load_file(str(f)), f.with_name(name))
        f.unlink()


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_pickled_pipeline_weights_are_refused_without_torch_load(pipeline_folder, component, tmp_path, capsys,
                                                                  monkeypatch):
    pipe = tmp_path / "pipe"
    shutil.copytree(pipeline_folder, pipe)
    _pickle(pipe, component)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(InputError, match="never unpickles") as err:
        compdiff.open_model(pipe)
    assert f"{pipe / component} (entry '{component}') holds pickled weights" in str(err.value) and "\n" not in str(err.value)
    before = _listing(tmp_path)
    rc = main(["sample", "a castle", "--model", str(pipe), "--steps", "1", "--out", str(tmp_path / "c.png")])
    err = capsys.readouterr().err
    _assert_clean_exit_2(rc, err, "pickled weights")
    assert len(err.strip().splitlines()) == 1 and "weights_only" not in err
    assert _listing(tmp_path) == before


def test_a_pipeline_with_a_broken_index_is_named(pipeline_folder, tmp_path, capsys):
    pipe = tmp_path / "pipe"
    shutil.copytree(pipeline_folder, pipe)
    index = json.loads((pipe / "model_index.json").read_text())
    (pipe / "model_index.json").write_text(json.dumps({**index, "unet": ["os", "system"]}))
    with pytest.raises(InputError, match="model_index.json: entry 'unet' names os.system: compdiff loads pipeline components from "
                       "diffusers and transformers only"):
        DiffusersBackend.from_pretrained(pipe)
    (pipe / "model_index.json").write_text("{oops")
    with pytest.raises(InputError, match="model_index.json: not a readable JSON object"):
        DiffusersBackend.from_pretrained(pipe)
