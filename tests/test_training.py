"""Training: bit-exact resume, atomic checkpoints, signals, bad input, 2 processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compdiff.cli import main
from compdiff.models import load_model
from compdiff.training import TrainConfig, train
from compdiff.training.checkpoint import latest_checkpoint, load_checkpoint

TINY = dict(task="objects", resolution=16, batch_size=4, channels=(16, 32), layers_per_block=1,
            precision="fp32", warmup=2, log_every=1)
TINY_ARGS = ["--task", "objects", "--resolution", "16", "--batch-size", "4", "--channels", "16,32",
             "--layers-per-block", "1", "--precision", "fp32", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _state(run: Path) -> dict:
    return load_checkpoint(latest_checkpoint(run))


def test_resume_is_bit_exact(tmp_path):
    k = 3
    train(TrainConfig(out=str(tmp_path / "one"), steps=2 * k, checkpoint_every=100, **TINY), progress=False)
    # k steps, stop (the run's step budget is still 2k: same LR schedule), resume, k more
    cfg = TrainConfig(out=str(tmp_path / "two"), steps=2 * k, checkpoint_every=k, **TINY)
    _run_until(cfg, k)
    train(cfg, resume=True, progress=False)
    a, b = _state(tmp_path / "one"), _state(tmp_path / "two")
    assert a["step"] == b["step"] == 2 * k
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    for pid, st in a["optimizer"]["state"].items():
        for key, val in st.items():
            assert torch.equal(torch.as_tensor(val), torch.as_tensor(b["optimizer"]["state"][pid][key]))
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 2 * k + 1))  # the log continues without gaps or repeats


def _run_until(cfg: TrainConfig, stop_at: int) -> None:
    """Run cfg, interrupting after stop_at steps exactly as SIGINT would (flag checked after a step)."""
    import compdiff.training.loop as loop

    real = loop._ema_update
    calls = {"n": 0}

    def ema_then_signal(*args):
        real(*args)
        calls["n"] += 1
        if calls["n"] == stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    loop._ema_update = ema_then_signal
    try:
        result = train(cfg, progress=False)
    finally:
        loop._ema_update = real
    assert result.interrupted_by == "SIGINT" and result.steps_done == stop_at
    assert _state(Path(cfg.out))["step"] == stop_at


def test_exported_model_loads_and_samples(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "r"), steps=2, **TINY), progress=False)
    loaded = load_model(result.model_dir)
    denoiser, encoder, schedule = loaded
    cfg = loaded.config
    assert cfg.task == "objects" and cfg.resolution == 16
    out = denoiser(torch.randn(2, 3, 16, 16), torch.tensor([5, 900]), encoder.encode(["0.3,0.4", "0.5,0.5"]))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    assert (tmp_path / "r" / "loss.png").is_file()


def test_load_refuses_pickles(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "r"), steps=1, **TINY), progress=False)
    d = tmp_path / "pickled"
    shutil.copytree(result.model_dir, d)
    for f in d.rglob("*.safetensors"):
        torch.save({}, f.with_suffix(".bin"))
        f.unlink()
    with pytest.raises(ValueError, match="never unpickles"):
        load_model(d)


@pytest.mark.parametrize("bad,message", [
    (["--task", "faces"], "unknown task"),
    (["--resolution", "31"], "multiple of 2"),
    (["--batch-size", "0"], "--batch-size: must be an integer 1..4096"),  # checked while parsing
    (["--channels", "16,x"], "comma-separated"),
    (["--max-objects", "6"], "max objects per scene for task objects must be in [1, 5]"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, bad, message):
    out = tmp_path / "run"
    args = ["train", *TINY_ARGS, "--steps", "1", "--out", str(out)]
    for i in range(0, len(bad), 2):  # replace the flag's value
        j = args.index(bad[i]) if bad[i] in args else None
        if j is None:
            args += bad[i:i + 2]
        else:
            args[j + 1] = bad[i + 1]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("compdiff: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--steps", "1", "--out", str(out)]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["train", *TINY_ARGS, "--steps", "1", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert main(["train", *TINY_ARGS, "--steps", "2", "--lr", "0.5", "--out", str(out), "--resume"]) == 2
    assert "other settings (lr)" in capsys.readouterr().err
    assert main(["train", *TINY_ARGS, "--steps", "2", "--out", str(out), "--resume"]) == 0


def _spawn(args, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "compdiff", "train", *TINY_ARGS, *args],
                            env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run: Path, proc, timeout=120):
    t0 = time.time()
    while latest_checkpoint(run) is None:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.2)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = _spawn(["--steps", "100000", "--checkpoint-every", "1000", "--log-every", "1", "--out", str(run)], tmp_path)
    t0 = time.time()
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "checkpoint saved at step" in err and "--resume" in err
    step = load_checkpoint(latest_checkpoint(run))["step"]
    assert step >= 1 and (run / "model" / "compdiff.json").is_file()


def test_kill_9_leaves_the_last_complete_checkpoint_loadable(tmp_path):
    run = tmp_path / "run"
    proc = _spawn(["--steps", "100000", "--checkpoint-every", "1", "--out", str(run)], tmp_path)
    _wait_for_checkpoint(run, proc)
    time.sleep(1.5)  # several checkpoints later, mid-write with good probability
    proc.kill()
    proc.wait()
    state = load_checkpoint(latest_checkpoint(run))
    assert state["step"] >= 1 and state["model"]
    # and the run continues from there
    assert main(["train", *TINY_ARGS, "--steps", str(state["step"] + 1), "--out", str(run), "--resume"]) == 0
    assert load_checkpoint(latest_checkpoint(run))["step"] == state["step"] + 1


def test_two_cpu_processes_with_accelerate(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    run = tmp_path / "run"
    # --multi_gpu on a machine without a GPU (CUDA hidden) starts CPU processes; --cpu would start one
    proc = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "compdiff", "train",
                           *TINY_ARGS, "--steps", "3", "--log-every", "1", "--out", str(run)],
                          env={**ENV, "CUDA_VISIBLE_DEVICES": ""}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(latest_checkpoint(run))["step"] == 3
    assert json.loads((run / "model" / "compdiff.json").read_text())["training"]["processes"] == 2
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]  # one log, written by the main process only
    load_model(run / "model")


def test_max_objects_is_recorded_in_the_model(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "r"), steps=1, max_objects=2, **TINY), progress=False)
    meta = json.loads((result.model_dir / "compdiff.json").read_text())
    assert meta["training"]["max_objects"] == 2


def test_data_workers_train_exactly_the_same_model(tmp_path):
    a = train(TrainConfig(out=str(tmp_path / "inline"), steps=3, **TINY), progress=False)
    b = train(TrainConfig(out=str(tmp_path / "workers"), steps=3, data_workers=2, **TINY), progress=False)
    assert a.steps_done == b.steps_done == 3
    sa, sb = _state(tmp_path / "inline"), _state(tmp_path / "workers")
    for part in ("model", "ema"):
        for name in sa[part]:
            assert torch.equal(sa[part][name], sb[part][name]), (part, name)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_to_the_process_group_with_data_workers_saves_a_checkpoint(tmp_path, signum, code):
    """Ctrl-C in a terminal (or a job control's SIGTERM) signals every process of the group, the
    data workers too. torch's workers already swallow SIGINT; SIGTERM would kill them, and the
    main process would die of the lost worker instead of saving a checkpoint."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "compdiff", "train", *TINY_ARGS, "--steps", "100000",
                             "--checkpoint-every", "1000", "--data-workers", "2", "--out", str(run)],
                            env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    t0 = time.time()
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "checkpoint saved at step" in err and "Traceback" not in err
    assert load_checkpoint(latest_checkpoint(run))["step"] >= 1
