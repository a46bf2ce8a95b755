"""Samplers: plain, stateless functions of a condition-free ``eps_fn(x, t)``.

They never see models, concepts or batching; composition happens before, in
``compdiff.compose``. Notation (see ``compdiff.schedule``): a_t = alphas_cumprod[t],
s = the next (smaller) timestep of the run, a_s = 1 when s < 0 (the clean end).

Randomness: ``generator`` is one ``torch.Generator`` for the whole batch, or a
list with one generator per sample, so that sample i depends only on its own
seed and not on the batch size (EDM's habit). Noise is drawn exactly when and
as diffusers' DDPMScheduler/DDIMScheduler draw it, so with the same generator
the two agree step for step (tests/test_sampling_equivalence.py).

MCMC correction (``correct="ula"|"uhmc"``, see ``compdiff.correctors``): at each level i of
the run (0 = the noisiest) with lo <= i/n < hi, ``correct_range=(lo, hi)``, the sampler
first runs ``corrector_steps`` Langevin (ULA) or underdamped-Langevin (U-HMC) steps that
target the composed model's density at that level, with step h_t = c·σ_t²
(c = ``corrector_step_size``), then takes its ordinary step from the corrected x. The
corrector's last eps is reused by the step, so a corrected level costs corrector_steps
extra model evaluations. Corrector noise comes from the same ``generator`` (per sample
when it is a list). With ``correct=None`` (the default) nothing changes: the same eps
calls and the same noise draws as before.

Defaults, chosen on the analytic Gaussian targets (docs/operators.md, bench/analytic_correctors.py):
c = 1.0, 2 steps, on the cleaner half of the run (0.5, 1.0), damping 0.5. Correcting only
the noisier half changes nothing measurable there; the last levels are where the plain
sampler's error is made and fixed.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor

from compdiff import correctors
from compdiff.correctors import Corrector
from compdiff.denoiser import EpsFn
from compdiff.errors import InputError
from compdiff.schedule import NoiseSchedule

#: default corrector options (measured: docs/operators.md)
CORRECTOR_STEPS = 2
CORRECTOR_STEP_SIZE = 1.0
CORRECT_RANGE = (0.5, 1.0)
CORRECTOR_DAMPING = 0.5

Generator = torch.Generator | Sequence[torch.Generator] | None
Timesteps = Sequence[int] | Tensor | int | None


class StepInfo(NamedTuple):
    """Passed to ``callback`` after each step. x: the new sample; x0: the step's prediction of x_0."""

    step: int
    num_steps: int
    t: int
    x: Tensor
    x0: Tensor


Callback = Callable[[StepInfo], None]


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def randn(shape: Sequence[int], generator: Generator = None, dtype: torch.dtype = torch.float32,
          device: torch.device | str = "cpu") -> Tensor:
    """Standard normal noise; with a list of generators, row i is drawn from generator i alone."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator]
        return torch.stack(rows).to(device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)


def _timesteps(schedule: NoiseSchedule, timesteps: Timesteps) -> list[int]:
    if timesteps is None:
        return list(range(schedule.T - 1, -1, -1))
    if isinstance(timesteps, int):
        return schedule.timesteps(timesteps).tolist()
    ts = [int(t) for t in (timesteps.tolist() if isinstance(timesteps, Tensor) else timesteps)]
    if not ts:
        raise ValueError("timesteps is empty")
    if any(not 0 <= t < schedule.T for t in ts):
        raise ValueError(f"timesteps must lie in [0, {schedule.T}), got {ts}")
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError("timesteps must be strictly decreasing")
    return ts


def _x0(x: Tensor, eps: Tensor, a_t: float, clip_x0: float | None) -> tuple[Tensor, Tensor]:
    """(eps, x0) from eps at (x, t); with clip_x0, x0 is clamped to [-c, c] and eps re-derived from it."""
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # x_0 = (x_t - sigma_t eps) / alpha_t
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    return eps, x0


class _Correction(NamedTuple):
    kind: Corrector | None
    steps: int
    c: float
    lo: float
    hi: float
    damping: float

    @classmethod
    def check(cls, kind: Corrector | None, steps: int, c: float, rng: tuple[float, float],
              damping: float) -> _Correction:
        if kind is not None and kind not in correctors.CORRECTORS:
            raise InputError(f"correct must be None, 'ula' or 'uhmc', got {kind!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"corrector_steps must be an integer >= 1, got {steps!r}")
        if not (math.isfinite(c) and c > 0):
            raise InputError(f"corrector_step_size must be a finite number > 0, got {c}")
        lo, hi = (float(v) for v in rng)
        if not 0.0 <= lo < hi <= 1.0:
            raise InputError(f"correct_range must be (lo, hi) with 0 <= lo < hi <= 1, got {rng}")
        if not 0.0 <= damping < 1.0:
            raise InputError(f"corrector_damping must lie in [0, 1), got {damping}")
        return cls(kind, steps, float(c), lo, hi, float(damping))

    def __call__(self, eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, t: int, eps: Tensor, i: int, n: int,
                 generator: Generator) -> tuple[Tensor, Tensor]:
        """Correct x at level i of n (timestep t) if that level is in range; eps = eps_fn(x, t)."""
        if self.kind is None or not self.lo <= i / n < self.hi:
            return x, eps
        noise = lambda: randn(x.shape, generator, x.dtype, x.device)  # noqa: E731
        if self.kind == "ula":
            return correctors.ula(eps_fn, schedule, x, t, eps, self.steps, self.c, noise)
        return correctors.uhmc(eps_fn, schedule, x, t, eps, self.steps, self.c, self.damping, noise)


def _levels(schedule: NoiseSchedule, ts: list[int]) -> Iterator[tuple[int, int, float, float]]:
    """(i, t, a_t, a_s) for each step of the run: s is the next listed timestep, a_s = 1 after the last."""
    a = schedule.alphas_cumprod.tolist()
    for i, t in enumerate(ts):
        yield i, t, a[t], (a[ts[i + 1]] if i + 1 < len(ts) else 1.0)


def sample_ddpm(eps_fn: EpsFn, x_T: Tensor, schedule: NoiseSchedule, timesteps: Timesteps = None,
                generator: Generator = None, callback: Callback | None = None,
                clip_x0: float | None = None, *, correct: Corrector | None = None,
                corrector_steps: int = CORRECTOR_STEPS, corrector_step_size: float = CORRECTOR_STEP_SIZE,
                correct_range: tuple[float, float] = CORRECT_RANGE,
                corrector_damping: float = CORRECTOR_DAMPING) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Alg. 2), variance "fixed small" (beta tilde).

    x_T: (B, ...) starting noise. timesteps: descending ints; None = all T steps; an int n =
    ``schedule.timesteps(n)`` ("leading"). With a subset of timesteps each step uses the
    respaced beta_t = 1 - a_t/a_s, as diffusers does. Returns x_0 (B, ...).
    correct, corrector_*: MCMC correction before each step (see the module docstring and
    ``compdiff.correctors``); corrector_damping is U-HMC's momentum persistence γ.
    """
    fix = _Correction.check(correct, corrector_steps, corrector_step_size, correct_range, corrector_damping)
    ts = _timesteps(schedule, timesteps)
    x = x_T
    for i, t, a_t, a_s in _levels(schedule, ts):
        last = i + 1 == len(ts)
        beta = 1 - a_t / a_s
        eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x, eps = fix(eps_fn, schedule, x, t, eps, i, len(ts), generator)
        _, x0 = _x0(x, eps, a_t, clip_x0)
        # posterior mean, DDPM eq. 7: mu = sqrt(a_s) beta/(1-a_t) x0 + sqrt(1-beta) (1-a_s)/(1-a_t) x_t
        mean = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x
        if not last:
            # beta tilde = (1-a_s)/(1-a_t) beta, floored like diffusers' DDPMScheduler
            var = max((1 - a_s) / (1 - a_t) * beta, 1e-20)
            x = mean + math.sqrt(var) * randn(x.shape, generator, x.dtype, x.device)
        else:
            x = mean
        if callback is not None:
            callback(StepInfo(i, len(ts), t, x, x0))
    return x


def sample_ddim(eps_fn: EpsFn, x_T: Tensor, schedule: NoiseSchedule, timesteps: Timesteps,
                eta: float = 0.0, generator: Generator = None, callback: Callback | None = None,
                clip_x0: float | None = None, *, correct: Corrector | None = None,
                corrector_steps: int = CORRECTOR_STEPS, corrector_step_size: float = CORRECTOR_STEP_SIZE,
                correct_range: tuple[float, float] = CORRECT_RANGE,
                corrector_damping: float = CORRECTOR_DAMPING) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta=0 is deterministic, eta=1 matches DDPM's variance.

    x_T: (B, ...). timesteps: descending ints, or an int n = ``schedule.timesteps(n)``.
    The last step goes to a_s = 1 (diffusers' ``set_alpha_to_one=True``). With clip_x0 the
    clipped x0 also yields the eps used for the direction term (``use_clipped_model_output``).
    correct, corrector_*: MCMC correction before each step (see the module docstring); it
    makes even eta=0 stochastic (its noise comes from ``generator``).
    """
    fix = _Correction.check(correct, corrector_steps, corrector_step_size, correct_range, corrector_damping)
    if timesteps is None:
        raise ValueError("sample_ddim needs timesteps (a list, or a number of steps)")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ts = _timesteps(schedule, timesteps)
    x = x_T
    for i, t, a_t, a_s in _levels(schedule, ts):
        eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x, eps = fix(eps_fn, schedule, x, t, eps, i, len(ts), generator)
        eps, x0 = _x0(x, eps, a_t, clip_x0)
        # sigma_t(eta) = eta sqrt((1-a_s)/(1-a_t)) sqrt(1 - a_t/a_s)
        std = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        # x_s = sqrt(a_s) x0 + sqrt(1 - a_s - std²) eps + std z
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - std**2, 0.0)) * eps
        if eta > 0:
            x = x + std * randn(x.shape, generator, x.dtype, x.device)
        if callback is not None:
            callback(StepInfo(i, len(ts), t, x, x0))
    return x
