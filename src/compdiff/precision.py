"""bf16 or float32, decided by timing the model's own work on this machine, never by CPU flags.

Why timing: on an AMD EPYC without native bf16, oneDNN emulates bf16 and a 3x3 convolution runs
about 50x slower under autocast than in float32 (bench/bf16_conv.py); on an Intel Xeon with AMX
the same layer is 2x faster and a relations training step 1.15x faster. `/proc/cpuinfo` flags
predicted neither well enough, so `--precision auto` (training) and `--precision auto`
(sampling, evaluation) run the model's own step a few times each way and keep the faster one.

On CUDA, bf16 is chosen whenever the device supports it (no timing: every GPU the project has
used runs bf16 faster, and timing there needs synchronisation the callers would have to supply).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from compdiff.errors import InputError

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")

# bf16 is kept only if it is at least this much faster: a tie is not worth bf16's lower precision.
MIN_GAIN = 0.05
# A first bf16 call slower than this many float32 calls ends the timing at once (emulated bf16
# costs ~50x; there is no point repeating it), so `auto` costs a second or two on such a CPU.
GIVE_UP_RATIO = 3.0


@dataclass(frozen=True)
class PrecisionChoice:
    """What was chosen and why. fp32_s / bf16_s: median seconds of one timed step (None: not timed)."""

    bf16: bool
    reason: Literal["asked", "cuda", "measured"]
    fp32_s: float | None = None
    bf16_s: float | None = None

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def describe(self) -> str:
        if self.reason != "measured":
            return f"precision {self.name} ({'as asked' if self.reason == 'asked' else 'CUDA supports bf16'})"
        assert self.fp32_s is not None and self.bf16_s is not None
        return (f"precision auto -> {self.name}: one step takes {1e3 * self.fp32_s:.1f} ms in float32, "
                f"{1e3 * self.bf16_s:.1f} ms under bf16 autocast ({self.bf16_s / self.fp32_s:.2f}x)")


def measure(step: Callable[[bool], object], *, repeats: int = 3,
            clock: Callable[[], float] = time.perf_counter) -> PrecisionChoice:
    """Time step(False) (float32) and step(True) (bf16 autocast) and keep the faster.

    step(bf16) must run one unit of the caller's real work (a forward and backward of the
    network on a small batch, or one denoiser call) under autocast when bf16 is True. Each side
    is called once untimed first (oneDNN picks its kernels on the first call of a shape), then
    `repeats` times, interleaved so that a change in machine load hits both sides alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")

    def _timed(fn: Callable[[], object]) -> float:
        t0 = clock()
        fn()
        return clock() - t0

    step(False)
    fp32 = [_timed(lambda: step(False))]
    first_bf16 = _timed(lambda: step(True))  # includes kernel selection: an upper bound
    if first_bf16 > GIVE_UP_RATIO * fp32[0]:
        return PrecisionChoice(False, "measured", fp32[0], first_bf16)
    bf16: list[float] = []
    for _ in range(repeats):
        bf16.append(_timed(lambda: step(True)))
        fp32.append(_timed(lambda: step(False)))
    f, b = statistics.median(fp32), statistics.median(bf16)
    return PrecisionChoice(b < (1 - MIN_GAIN) * f, "measured", f, b)


def resolve(precision: str, device: torch.device | str, step: Callable[[bool], object] | None) -> PrecisionChoice:
    """The precision to run in: "bf16"/"fp32" as asked; "auto" bf16 on a CUDA device that supports
    it, else measured with `step` on the CPU (see `measure`)."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return PrecisionChoice(precision == "bf16", "asked")
    device = torch.device(device)
    if device.type == "cuda":
        return PrecisionChoice(torch.cuda.is_bf16_supported(), "cuda")
    if step is None:
        raise ValueError("precision auto on the CPU needs a step to time")
    return measure(step)
