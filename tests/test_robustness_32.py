"""Issue 32, the hostile pass: no foreign file deleted, no hang from a model folder, no silent
restart, every bad input a clear exit 2 whose first stderr line is the whole error.

Each table below is one item of the issue; every row failed on the code before the fix."""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compdiff.__main__ import main  # the whole command, serve included
from compdiff.training import TrainConfig, train

TINY = dict(task="objects", resolution=16, batch_size=2, channels=(16, 32), layers_per_block=1,
            precision="fp32", warmup=1, log_every=1, checkpoint_every=1)
TINY_ARGS = ["--task", "objects", "--resolution", "16", "--batch-size", "2", "--channels", "16,32",
             "--layers-per-block", "1", "--precision", "fp32", "--warmup", "1", "--log-every", "1",
             "--checkpoint-every", "1", "--no-progress"]
EVAL_OK = ["eval", "--task", "objects", "--components", "1", "--n", "2", "--steps", "1", "--batch-size", "2",
           "--methods", "composed", "--no-progress"]
PREFIX = "compdiff: error: "
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    got = capsys.readouterr()
    return rc, got.out, got.err


def first_line_error(rc: int, err: str, needle: str, code: int = 2) -> str:
    """The error is exit ``code``, the FIRST stderr line is ``compdiff: error: ...`` holding ``needle``."""
    assert rc == code, (rc, err)
    first = err.split("\n", 1)[0]
    assert first.startswith(PREFIX) and len(first) > len(PREFIX) + 10, err
    assert needle in first, (needle, first)
    assert "Traceback" not in err
    return first


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a folder)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A tiny run trained 3 steps, a checkpoint every step (only step-0000003 is kept)."""
    run = tmp_path_factory.mktemp("base") / "run"
    train(TrainConfig(out=str(run), steps=3, **TINY), progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000003"]
    return run


def copy_run(base: Path, tmp: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(base, run, symlinks=True)
    return run


def metric_steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def resume_argv(run: Path, steps: int) -> list[str]:
    return ["train", *TINY_ARGS, "--steps", str(steps), "--out", str(run), "--resume"]


# ---- 1: eval --overwrite deletes a foreign file; a report is written into a foreign folder ---------------

def _report(folder: Path) -> None:
    """A results.json as compdiff eval writes it (enough for the report check)."""
    folder.mkdir(exist_ok=True)
    (folder / "results.json").write_text(json.dumps(
        {"spec": {"task": "objects", "methods": ["composed"], "components": [1]}, "cells": {}, "methods": {}}))


EVAL_FOREIGN = [  # (files put in --out, whether a report's results.json is there too, --overwrite, the name refused)
    (["grid_holiday_photos.png"], False, True, "grid_holiday_photos.png"),
    (["grid_holiday_photos.png"], False, False, "grid_holiday_photos.png"),
    (["grid_composed_K1 (copy).png"], False, True, "grid_composed_K1 (copy).png"),
    (["grid_composed_K1.png", "grid_.png"], False, False, "grid_"),
    ([".grid_me.png.x.tmp"], False, True, ".grid_me.png.x.tmp"),
    (["grid_holiday_photos.png"], True, True, "grid_holiday_photos.png"),
    (["grid_magic_K1.png"], True, True, "grid_magic_K1.png"),
    (["table.md.bak"], True, True, "table.md.bak"),
]


@pytest.mark.parametrize("files, report, overwrite, needle", EVAL_FOREIGN)
def test_eval_never_deletes_or_writes_into_what_is_not_its_report(files, report, overwrite, needle, tmp_path,
                                                                   capsys):
    rep = tmp_path / "rep"
    rep.mkdir()
    if report:
        _report(rep)
    for name in files:
        (rep / name).write_bytes(b"\x89PNG holiday")
    before = snapshot(rep)
    rc, _, err = run_cli([*EVAL_OK, "--out", str(rep), *(["--overwrite"] if overwrite else [])], capsys)
    first_line_error(rc, err, needle)
    assert snapshot(rep) == before


def test_eval_still_resumes_and_overwrites_its_own_early_folder(tmp_path, capsys):
    """What a killed evaluation leaves before its first results.json (a grid of its own name) stays resumable."""
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "grid_composed_K1.png").write_bytes(b"old")
    assert main([*EVAL_OK, "--out", str(rep), "--overwrite"]) == 0
    assert json.loads((rep / "results.json").read_text())["spec"]["n"] == 2
    assert (rep / "grid_composed_K1.png").read_bytes() != b"old"


# ---- 2: train --resume / --overwrite delete the user's copies ------------------------------------------

def _copy_ckpt(run: Path, rel: str) -> None:
    shutil.copytree(run / "checkpoints" / "step-0000003", run / rel)
    (run / rel / "NOTES.txt").write_text("mine")


def _copy_model(run: Path, rel: str) -> None:
    shutil.copytree(run / "model", run / rel)


def _note(run: Path, rel: str) -> None:
    (run / rel).parent.mkdir(parents=True, exist_ok=True)
    (run / rel).write_text("mine")


USER_COPIES = [  # how the user's copy is made, its path in the run; resume keeps it (exit 0), overwrite refuses
    (_copy_ckpt, "checkpoints/step-0000002.bak"),
    (_copy_ckpt, "checkpoints/step-0000002 (copy)"),
    (_copy_ckpt, "checkpoints/step-0000001.tmp-mine"),
    (_copy_ckpt, "checkpoints/step-0000001-old"),
    (_copy_ckpt, "checkpoints/step-00000001"),
    (_copy_model, "model.tmp"),
    (_copy_model, "model.tmp-backup"),
    (_copy_model, "snapshots/step-0000001.old"),
    (_note, "checkpoints/latest.bak"),
    (_note, "checkpoints/latest.tmp-notes"),
    (_note, "checkpoints/NOTES.txt"),
]
INSIDE = [  # the user's file inside a folder compdiff replaces or deletes: resume refuses (exit 2) before training
    "checkpoints/step-0000003/NOTES.txt", "model/NOTES.txt", "model/unet/NOTES.txt",
]


@pytest.mark.parametrize("make, rel", USER_COPIES, ids=[r for _, r in USER_COPIES])
def test_resume_keeps_the_users_copies(make, rel, base_run, tmp_path, capsys):
    run = copy_run(base_run, tmp_path)
    make(run, rel)
    mine = {k: v for k, v in snapshot(run).items() if k == rel or k.startswith(rel + "/")}
    rc, _, err = run_cli(resume_argv(run, 5), capsys)
    assert rc == 0, err
    assert {k: v for k, v in snapshot(run).items() if k in mine} == mine  # all there, bytes unchanged
    assert metric_steps(run) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("rel", INSIDE)
def test_resume_refuses_to_replace_a_folder_holding_the_users_file(rel, base_run, tmp_path, capsys):
    run = copy_run(base_run, tmp_path)
    _note(run, rel)
    before = snapshot(run)
    rc, _, err = run_cli(resume_argv(run, 5), capsys)
    first_line_error(rc, err, rel)
    assert snapshot(run) == before


@pytest.mark.parametrize("make, rel", USER_COPIES + [(_note, r) for r in INSIDE],
                         ids=[r for _, r in USER_COPIES] + INSIDE)
def test_overwrite_refuses_a_run_holding_the_users_copies(make, rel, base_run, tmp_path, capsys):
    run = copy_run(base_run, tmp_path)
    make(run, rel)
    before = snapshot(run)
    rc, _, err = run_cli(["train", *TINY_ARGS, "--steps", "1", "--out", str(run), "--overwrite"], capsys)
    first_line_error(rc, err, "compdiff did not write")
    assert snapshot(run) == before


# ---- 5: a hang (or MemoryError) from the numbers of compdiff.json ---------------------------------------

def _with(meta: dict, path: str, value) -> dict:
    meta = json.loads(json.dumps(meta))
    *parents, key = path.split(".")
    d = meta
    for p in parents:
        d = d.setdefault(p, {})
    d[key] = value
    return meta


MODEL_NUMBERS = [  # a dotted key of compdiff.json, its hostile value, a word the first line holds
    ("schedule", {"kind": "cosine", "T": 10**18}, "'schedule'"),
    ("schedule", {"kind": "cosine", "T": 10**10}, "'schedule'"),
    ("schedule", {"kind": "linear", "T": 10**10}, "'schedule'"),
    ("schedule", {"kind": "cosine", "T": 1e300}, "'schedule'"),
    ("schedule", {"kind": "cosine", "T": 2.5}, "'schedule'"), ("schedule", {"kind": "cosine", "T": True}, "'schedule'"),
    ("schedule", {"kind": "cosine", "T": "1000"}, "'schedule'"),
    ("schedule", {"kind": "linear", "T": 1000, "beta_end": 5.0}, "'schedule'"),
    ("schedule", {"kind": "linear", "T": 1000, "beta_start": "nan"}, "'schedule'"),
    ("schedule", {"kind": "flow", "shift": "2"}, "'schedule'"),
    ("schedule", {"kind": "cosine", "T": 100_001}, "'schedule'"),
    ("model.layers_per_block", 10**9, "layers_per_block"), ("model.channels", [16] * 10_000, "channels"),
    ("model.channels", [10**9, 32], "channels"), ("model.vocab_sizes", [10**12], "vocab_sizes"),
    ("model.bump_sigma", 1e308, "bump_sigma"), ("model.bump_sigma", -1.0, "bump_sigma"),
    ("sampling", {"steps": 10**12}, "'sampling'"),
]


@pytest.mark.parametrize("key, value, needle", MODEL_NUMBERS, ids=[f"{k}={str(v)[:12]}" for k, v, _ in MODEL_NUMBERS])
def test_numbers_from_a_model_folder_are_bounded(key, value, needle, tiny_model, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    meta = json.loads((model / "compdiff.json").read_text())
    (model / "compdiff.json").write_text(json.dumps(_with(meta, key, value)))

    def too_slow(signum, frame):
        raise TimeoutError("the model folder was read for more than 20 s")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(20)
    try:
        rc, _, err = run_cli(["sample", '"0.3,0.5"', "--steps", "1", "--no-progress", "--model", str(model),
                              "--out", str(tmp_path / "x.png")], capsys)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    first = first_line_error(rc, err, needle)
    assert "compdiff.json" in first
    assert not (tmp_path / "x.png").exists()


def test_the_cosine_table_is_the_same_as_the_loop_it_replaced():
    import math

    from compdiff.schedule import NoiseSchedule

    def loop(T, s=0.008, max_beta=0.999):
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float64), dim=0)

    for T in (1, 2, 10, 1000, 4000):  # (bounded T: see MODEL_NUMBERS)
        torch.testing.assert_close(NoiseSchedule.cosine(T).alphas_cumprod, loop(T), rtol=1e-13, atol=0)


# ---- 6: --resume silently restarting from step 0 -------------------------------------------------------

def _latest(text: str | None):
    def damage(run: Path) -> None:
        pointer = run / "checkpoints" / "latest"
        pointer.unlink()
        if text is not None:
            pointer.write_text(text)
    return damage


def _latest_to_outside(run: Path) -> None:
    """latest names a checkpoint-shaped folder outside the run."""
    outside = run.parent / "elsewhere"
    shutil.copytree(run / "checkpoints" / "step-0000003", outside)
    (run / "checkpoints" / "latest").write_text("../../elsewhere")


LATEST = [  # how checkpoints/latest is damaged; an intact step-0000003 is there: resume from step 3
    ("missing", _latest(None)), ("outside", _latest("../../../../etc")), ("absolute", _latest("/etc")),
    ("names-none", _latest("step-9999999")), ("garbage", _latest("\x00\xff junk")), ("empty", _latest("")),
    ("dotdot", _latest("step-0000003/../..")), ("outside-checkpoint", _latest_to_outside),
]


@pytest.mark.parametrize("name, damage", LATEST, ids=[n for n, _ in LATEST])
def test_resume_uses_the_newest_intact_checkpoint_when_latest_is_bad(name, damage, base_run, tmp_path, capsys):
    run = copy_run(base_run, tmp_path)
    damage(run)
    rc, _, err = run_cli(resume_argv(run, 4), capsys)
    assert rc == 0, err
    assert metric_steps(run) == [1, 2, 3, 4]  # continued from step 3, nothing trained twice
    assert "step-0000003" in err  # and it says where it resumed from
    state = json.loads((run / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert state["step"] == 4
    if name == "outside-checkpoint":
        assert (run.parent / "elsewhere" / "state.json").is_file()


def test_resume_takes_the_newest_checkpoint_even_when_latest_names_an_older_one(base_run, tmp_path, capsys):
    """A kill between renaming step-0000003 into place and updating latest: step 3 is complete, latest says 2."""
    run = copy_run(base_run, tmp_path)
    ck = run / "checkpoints"
    shutil.copytree(ck / "step-0000003", ck / "step-0000002")
    state = json.loads((ck / "step-0000002" / "state.json").read_text())
    (ck / "step-0000002" / "state.json").write_text(json.dumps({**state, "step": 2}))
    (ck / "latest").write_text("step-0000002")
    rc, _, err = run_cli(resume_argv(run, 4), capsys)
    assert rc == 0, err
    assert "step-0000003" in err and metric_steps(run) == [1, 2, 3, 4]
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step-0000004"]


def _ckpt_sd():
    return {"w": torch.zeros(2)}, {"w": torch.zeros(2)}, {"state": {}, "param_groups": []}


SAVES = [  # checkpoints there before, the step saved, the checkpoints there after
    (["step-0000005"], 3, ["step-0000003", "step-0000005"]),  # a newer one is never deleted
    (["step-0000001", "step-0000002"], 3, ["step-0000003"]),  # older ones are superseded
    (["step-0000003"], 3, ["step-0000003"]),  # replaced
    (["step-0000002", "step-00000002"], 3, ["step-00000002", "step-0000003"]),  # not the name compdiff writes
]


@pytest.mark.parametrize("before, step, after", SAVES)
def test_a_checkpoint_save_deletes_only_older_checkpoints_it_wrote(before, step, after, tmp_path):
    from compdiff.training.checkpoint import save_checkpoint

    root = tmp_path / "checkpoints"
    for name in before:
        (root / name).mkdir(parents=True)
        (root / name / "state.json").write_text("{}")
    save_checkpoint(tmp_path, step, *_ckpt_sd(), {})
    assert sorted(p.name for p in root.iterdir() if p.name != "latest") == after
    assert (root / "latest").read_text() == f"step-{step:07d}"


def test_resume_without_any_checkpoint_refuses(base_run, tmp_path, capsys):
    run = copy_run(base_run, tmp_path)
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    rc, _, err = run_cli(resume_argv(run, 4), capsys)
    first_line_error(rc, err, "no checkpoint")
    assert snapshot(run) == before


# ---- 7: exit codes for an --out that cannot be written; eval --n 1 ---------------------------------------

UNWRITABLE = ["/sys/compdiff-test-out", "/proc/compdiff-test-out", "/sys/compdiff-a/b", ""]


@pytest.mark.parametrize("out", UNWRITABLE)
@pytest.mark.parametrize("cmd", ["train", "eval"])
def test_an_out_that_cannot_be_written_is_exit_2_before_any_model(cmd, out, tmp_path, capsys, monkeypatch, no_model):
    if out:
        try:
            os.makedirs(out)
        except OSError:
            pass
        else:
            shutil.rmtree(out)
            pytest.skip(f"{out} is writable on this machine")
    import compdiff.training.loop as loop

    built = []

    def no_training(*args, **kwargs):
        built.append(args)
        raise RuntimeError("training started")

    monkeypatch.setattr(loop, "Accelerator", no_training)  # made before the networks are built
    monkeypatch.chdir(tmp_path)
    argv = (["train", *TINY_ARGS, "--steps", "1"] if cmd == "train" else EVAL_OK) + ["--out", out]
    rc, _, err = run_cli(argv, capsys)
    first_line_error(rc, err, "--out")
    assert not built and not no_model and list(tmp_path.iterdir()) == []


def test_eval_n_1_is_refused_by_its_documented_range(tmp_path, capsys, no_model):
    from compdiff.__main__ import build_parser

    rc, _, err = run_cli([*EVAL_OK, "--n", "1", "--out", str(tmp_path / "rep")], capsys)
    first_line_error(rc, err, "--n")
    assert "2..100000" in err and not (tmp_path / "rep").exists() and not no_model
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["eval"].format_help().split())
    assert "2..100,000" in help_text


# ---- 8: a decompression bomb as --mask -----------------------------------------------------------------

def _png(path: Path, width: int, height: int, data: bool = True) -> Path:
    """A grey PNG of zeros, compressed as it is written (a huge image in a few kilobytes); without
    data, only the header (PIL reads the size from it)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        if data:
            z, row, out = zlib.compressobj(9), b"\x00" * (width + 1), []
            out = b"".join(z.compress(row) for _ in range(height)) + z.flush()
            f.write(chunk(b"IDAT", out))
        f.write(chunk(b"IEND", b""))
    return path


MASKS = [  # width, height, whole image data, a word the first line holds
    (20000, 20000, False, "pixels"), (12248, 12248, False, "pixels"),
    (5000, 5000, True, "pixels"), (1, 2**31 - 1, False, "pixels"),
]


@pytest.mark.parametrize("w, h, data, needle", MASKS)
def test_a_huge_mask_is_refused_naming_mask(w, h, data, needle, tmp_path, capsys, no_model):
    bomb = _png(tmp_path / "bomb.png", w, h, data)
    rc, _, err = run_cli(["sample", '"0.3,0.5" @ mask:m', "--mask", f"m={bomb}", "--steps", "1",
                          "--out", str(tmp_path / "x.png")], capsys)
    first = first_line_error(rc, err, "--mask")
    assert needle in first and len(err.strip().splitlines()) == 1 and not no_model


def test_a_mask_at_the_cap_still_loads(tmp_path):
    from compdiff.regions import MAX_MASK_PIXELS, load_mask

    side = int(MAX_MASK_PIXELS ** 0.5)
    m = load_mask(_png(tmp_path / "ok.png", side, side))
    assert m.shape == (side, side) and float(m.max()) == 0.0


# ---- 9: the first stderr line is the whole error -------------------------------------------------------

SERVE_BAD = ["missing", "bad-json", "empty"]


@pytest.mark.parametrize("bad", SERVE_BAD)
def test_serve_with_a_bad_model_prints_the_error_first(bad, tmp_path, capsys):
    pytest.importorskip("gradio")
    model = tmp_path / "nope"
    if bad != "missing":
        model.mkdir()
    if bad == "bad-json":
        (model / "compdiff.json").write_text("{oops")
    rc, _, err = run_cli(["serve", "--model", str(model), "--no-shipped", "--port", "0"], capsys)
    first_line_error(rc, err, "nope")


BARS = ["eval", "train"]


@pytest.mark.parametrize("cmd", BARS)
def test_an_error_after_a_progress_bar_starts_on_its_own_line(cmd, tmp_path, capsys, monkeypatch):
    import compdiff.eval.composition as composition
    import compdiff.training.loop as loop
    from compdiff.errors import InputError

    def fail(*args, **kwargs):
        raise InputError("the work failed on purpose")

    if cmd == "eval":
        monkeypatch.setattr(composition, "generate", fail)
        argv = [a for a in EVAL_OK if a != "--no-progress"] + ["--out", str(tmp_path / "rep")]
    else:
        monkeypatch.setattr(loop, "_train_step", fail)
        argv = ["train", *[a for a in TINY_ARGS if a != "--no-progress"], "--steps", "3", "--out", str(tmp_path / "r")]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2 and f"{cmd} objects" in err  # a bar was drawn
    errors = [ln for ln in err.split("\n") if "compdiff: error:" in ln]
    assert len(errors) == 1 and errors[0].startswith(PREFIX) and "on purpose" in errors[0], err


def _swap_weights(run: Path) -> None:
    """The checkpoint's weights of another network (a different width)."""
    f = run / "checkpoints" / "step-0000003" / "model.safetensors"
    sd = load_file(str(f))
    name = next(k for k, v in sd.items() if v.ndim == 4)
    sd[name] = torch.zeros(*[d + 1 for d in sd[name].shape])
    save_file(sd, str(f))


def _drop_tensor(run: Path) -> None:
    f = run / "checkpoints" / "step-0000003" / "ema.safetensors"
    sd = load_file(str(f))
    sd.pop(sorted(sd)[0])
    save_file(sd, str(f))


def _truncate(name: str):
    def damage(run: Path) -> None:
        f = run / "checkpoints" / "step-0000003" / name
        f.write_bytes(f.read_bytes()[:40])
    return damage


def _state(change):
    def damage(run: Path) -> None:
        f = run / "checkpoints" / "step-0000003" / "state.json"
        f.write_text(change(f.read_text()))
    return damage


def _remove(name: str):
    return lambda run: (run / "checkpoints" / "step-0000003" / name).unlink()


DAMAGED = [  # (item 9 and 10) a damaged checkpoint on resume: one line naming the file
    ("shape-mismatch", _swap_weights, "model.safetensors"),
    ("missing-tensor", _drop_tensor, "ema.safetensors"),
    ("truncated-model", _truncate("model.safetensors"), "model.safetensors"),
    ("truncated-optimizer", _truncate("optimizer.safetensors"), "optimizer.safetensors"),
    ("garbage-state", _state(lambda s: "Expecting {garbage"), "state.json"),
    ("no-step", _state(lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "step"})), "state.json"),
    ("step-text", _state(lambda s: json.dumps({**json.loads(s), "step": "3"})), "state.json"),
    ("wrong-step", _state(lambda s: json.dumps({**json.loads(s), "step": 10**12})), "state.json"),
    ("state-list", _state(lambda s: "[1, 2]"), "state.json"),
    ("no-optimizer", _state(lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "optimizer"})),
     "state.json"),
    ("no-ema", _remove("ema.safetensors"), "ema.safetensors"),
    ("no-state", _remove("state.json"), "state.json"),
]


@pytest.mark.parametrize("name, damage, file", DAMAGED, ids=[n for n, _, _ in DAMAGED])
def test_a_damaged_checkpoint_on_resume_is_one_line_naming_the_file(name, damage, file, base_run, tmp_path, capsys):
    run = copy_run(base_run, tmp_path)
    damage(run)
    before = snapshot(run)
    rc, _, err = run_cli(resume_argv(run, 4), capsys)
    first = first_line_error(rc, err, str(run / "checkpoints" / "step-0000003"))
    assert file in first and len(err.strip().splitlines()) == 1, err
    assert "Error(s) in loading" not in err
    assert snapshot(run) == before  # nothing trained, nothing deleted


def test_third_party_log_lines_never_come_before_the_error(tiny_model, tmp_path):
    """diffusers warns about an unexpected UNet config key, then the model fails to load."""
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "unet" / "config.json").read_text())
    (model / "unet" / "config.json").write_text(json.dumps({**cfg, "not_a_diffusers_key": 1}))
    (model / "cond_embed.safetensors").unlink()
    r = subprocess.run([sys.executable, "-m", "compdiff", "sample", '"0.3,0.5"', "--steps", "1", "--no-progress",
                        "--model", str(model), "--out", str(tmp_path / "x.png")],
                       capture_output=True, text=True, env=ENV, timeout=300)
    first_line_error(r.returncode, r.stderr, "cond_embed.safetensors")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---- 10: unclear messages ------------------------------------------------------------------------------

def test_a_task_without_a_shipped_model_says_so_and_names_model(tmp_path, capsys, no_model):
    from compdiff.models import shipped_models

    missing = sorted({"described"} - set(shipped_models()))
    if not missing:
        pytest.skip("every task has a shipped model")
    for argv in ([*EVAL_OK[:2], "described", *EVAL_OK[3:], "--out", str(tmp_path / "rep")],
                 ["sample", "--task", "described", "red", "--out", str(tmp_path / "rep" / "x.png")]):
        rc, _, err = run_cli(argv, capsys)
        first = first_line_error(rc, err, "--model")
        assert "no shipped model" in first and "described" in first and not no_model
        assert not (tmp_path / "rep").exists()
    from compdiff.__main__ import build_parser

    eval_help = " ".join(build_parser()._subparsers._group_actions[0].choices["eval"].format_help().split())
    assert "shipped models:" in eval_help and "described: none" not in eval_help


# ---- also decided: --device cpu:7, --dtype with a world model, --out '' , explain and U+202E ---------

DECIDED = [  # argv, a word the first line holds
    (["eval", *EVAL_OK[1:], "--device", "cpu:7"], "--device"),
    (["eval", *EVAL_OK[1:], "--device", "cpu:1"], "--device"),
    (["sample", "--task", "objects", '"0.5,0.5"', "--steps", "1", "--device", "cpu:7", "--out", "x.png"], "--device"),
    (["serve", "--device", "cpu:7", "--port", "0"], "--device"),
    (["train", *TINY_ARGS, "--steps", "1", "--out", ""], "--out"),
]


@pytest.mark.parametrize("argv, needle", DECIDED)
def test_decided_inputs_are_refused(argv, needle, tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--out" not in argv and argv[0] != "serve":  # serve writes nothing
        argv = [*argv, "--out", str(tmp_path / "rep")]
    rc, _, err = run_cli(argv, capsys)
    first_line_error(rc, err, needle)
    assert list(tmp_path.iterdir()) == [] and not no_model


def test_a_world_model_refuses_a_dtype_it_would_ignore(tiny_model):
    from compdiff.errors import InputError
    from compdiff.models import load_model

    for dtype in ("float16", "bfloat16"):
        with pytest.raises(InputError, match="--dtype"):
            load_model(tiny_model, dtype=dtype)
    for dtype in ("auto", "float32"):
        assert load_model(tiny_model, dtype=dtype).config.resolution == 16


BIDI = ["\u202e", "\u202d", "\u2066", "\u2069", "\u200f", "\u061c"]


@pytest.mark.parametrize("ch", BIDI, ids=[f"U+{ord(c):04X}" for c in BIDI])
def test_explain_never_prints_bidi_controls_raw(ch, capsys):
    rc, out, err = run_cli(["explain", f'"a{ch}b" AND "c"'], capsys)
    assert rc == 0, err
    assert ch not in out and f"\\u{ord(ch):04x}" in out
