"""--precision auto: the choice follows the measured times, whatever the CPU's flags say."""
from __future__ import annotations

import pytest
import torch

from compdiff.errors import InputError
from compdiff.precision import GIVE_UP_RATIO, measure, resolve


class FakeClock:
    """A clock that only moves when a fake step runs: the test decides each side's duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_step(clock: FakeClock, fp32_s: float, bf16_s: float, calls: list[bool]):
    def step(bf16: bool) -> None:
        calls.append(bf16)
        clock.now += bf16_s if bf16 else fp32_s
    return step


@pytest.mark.parametrize("fp32_s,bf16_s,want", [
    (0.10, 0.05, True),    # AMX-like: bf16 2x faster
    (0.10, 0.087, True),   # a relations step on AMX: 1.15x
    (0.10, 0.098, False),  # a tie (under MIN_GAIN) keeps float32
    (0.10, 0.20, False),   # slower
])
def test_choice_follows_the_times(fp32_s, bf16_s, want):
    clock, calls = FakeClock(), []
    choice = measure(fake_step(clock, fp32_s, bf16_s, calls), repeats=3, clock=clock)
    assert choice.bf16 is want and choice.reason == "measured"
    assert choice.fp32_s == pytest.approx(fp32_s) and choice.bf16_s == pytest.approx(bf16_s)
    assert calls.count(True) == 4 and calls.count(False) == 5  # warm-ups, then interleaved repeats
    assert ("bf16" if want else "fp32") in choice.describe() and "ms" in choice.describe()


def test_emulated_bf16_gives_up_after_one_call():
    """An AMD-EPYC-like 50x: the timing stops at the first bf16 call instead of repeating it."""
    clock, calls = FakeClock(), []
    choice = measure(fake_step(clock, 0.01, 0.5, calls), repeats=3, clock=clock)
    assert not choice.bf16 and calls == [False, False, True]
    assert choice.bf16_s / choice.fp32_s > GIVE_UP_RATIO


def test_resolve_as_asked_and_errors():
    never = lambda bf16: pytest.fail("an explicit precision must not be timed")  # noqa: E731
    assert resolve("bf16", "cpu", never).bf16 and resolve("bf16", "cpu", never).reason == "asked"
    assert not resolve("fp32", "cpu", never).bf16
    with pytest.raises(InputError, match="--precision"):
        resolve("fp16", "cpu", never)


def test_resolve_auto_times_on_the_cpu_with_a_real_step():
    torch.set_num_threads(1)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 8, 8)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            conv(x).float().sum().backward()

    choice = resolve("auto", "cpu", step)
    assert choice.reason == "measured" and choice.fp32_s > 0 and choice.bf16_s > 0


def test_training_under_auto_equals_training_at_the_precision_it_chose(tmp_path, capsys):
    """auto times the network on a copy and a generator of its own: the run is bit-identical to the
    same run at the chosen precision (whichever this CPU picks), and the choice is logged and saved."""
    import json

    from compdiff.training import TrainConfig, train
    from compdiff.training.checkpoint import latest_checkpoint, load_checkpoint

    torch.set_num_threads(1)
    tiny = dict(task="objects", resolution=16, batch_size=4, channels=(16, 32), layers_per_block=1, warmup=2,
                steps=3, checkpoint_every=100)
    auto = train(TrainConfig(out=str(tmp_path / "auto"), precision="auto", **tiny), progress=False)
    line = [ln for ln in capsys.readouterr().err.splitlines() if "precision auto ->" in ln]
    assert len(line) == 1 and "ms in float32" in line[0], line
    info = json.loads((auto.model_dir / "compdiff.json").read_text())["training"]
    chosen = info["precision_used"]
    assert chosen in ("bf16", "fp32") and f"-> {chosen}" in line[0]
    assert set(info["precision_timing_ms"]) == {"fp32", "bf16"}
    train(TrainConfig(out=str(tmp_path / "asked"), precision=chosen, **tiny), progress=False)
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / n)) for n in ("auto", "asked"))
    for part in ("model", "ema"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    asked = json.loads((tmp_path / "asked" / "model" / "compdiff.json").read_text())["training"]
    assert asked["precision_used"] == chosen and "precision_timing_ms" not in asked


def _sample(tmp_path, name, *flags):
    from PIL import Image

    from compdiff.cli import main

    out = tmp_path / f"{name}.png"
    rc = main(["sample", "--task", "objects", '"0.3,0.3" AND NOT "0.7,0.7"', "--n", "2", "--steps", "2",
               "--seed", "0", "--no-progress", "--out", str(out), *flags])
    return rc, (Image.open(out).tobytes() if out.is_file() else None)


def test_sample_precision_auto_equals_the_precision_it_chose(tmp_path, capsys):
    torch.set_num_threads(1)
    rc, auto = _sample(tmp_path, "auto", "--precision", "auto")
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if "precision auto ->" in ln]
    assert rc == 0 and len(line) == 1, err
    chosen = "bf16" if "-> bf16" in line[0] else "fp32"
    rc, asked = _sample(tmp_path, "asked", "--precision", chosen)
    assert rc == 0 and asked == auto
    rc, default = _sample(tmp_path, "default")
    rc_f, fp32 = _sample(tmp_path, "fp32", "--precision", "fp32")
    assert rc == rc_f == 0 and default == fp32  # float32 unless asked: the same images on every CPU
    assert "precision" not in capsys.readouterr().err


def test_precision_flags_that_disagree_or_do_not_apply_are_exit_2(tmp_path, capsys):
    rc, img = _sample(tmp_path, "x", "--bf16", "--precision", "fp32")
    err = capsys.readouterr().err
    assert rc == 2 and img is None and err.startswith("compdiff: error: --bf16 and --precision fp32 disagree")


def test_precision_on_a_pipeline_points_to_dtype(tmp_path, capsys):
    import sd_tiny

    from compdiff.cli import main

    pipe = tmp_path / "sd"
    sd_tiny.save_pipeline(pipe)
    capsys.readouterr()  # building the pipeline logs transformers' own warnings, before main
    rc = main(["sample", "a castle", "--model", str(pipe), "--steps", "1", "--precision", "bf16", "--no-progress",
               "--out", str(tmp_path / "c.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "--dtype" in err.strip().splitlines()[0], err
    assert not (tmp_path / "c.png").exists()
