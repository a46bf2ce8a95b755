"""Samplers: plain, stateless functions of a condition-free ``eps_fn(x, t)``.

They never see models, concepts or batching; composition happens before, in
``compdiff.compose``. Notation (see ``compdiff.schedule``): a_t = alphas_cumprod[t],
s = the next (smaller) timestep of the run, a_s = 1 when s < 0 (the clean end).

Randomness: ``generator`` is one ``torch.Generator`` for the whole batch, or a
list with one generator per sample, so that sample i depends only on its own
seed and not on the batch size (EDM's habit). Noise is drawn exactly when and
as diffusers' DDPMScheduler/DDIMScheduler draw it, so with the same generator
the two agree step for step (tests/test_sampling_equivalence.py).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from compdiff.denoiser import EpsFn
from compdiff.schedule import NoiseSchedule

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


def _predict(eps_fn: EpsFn, x: Tensor, t: int, a_t: float, clip_x0: float | None) -> tuple[Tensor, Tensor]:
    """eps and x0 at (x, t); with clip_x0, x0 is clamped to [-c, c] and eps re-derived from it."""
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    eps = eps_fn(x, tt)
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # x_0 = (x_t - sigma_t eps) / alpha_t
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    return eps, x0


def sample_ddpm(eps_fn: EpsFn, x_T: Tensor, schedule: NoiseSchedule, timesteps: Timesteps = None,
                generator: Generator = None, callback: Callback | None = None,
                clip_x0: float | None = None) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Alg. 2), variance "fixed small" (beta tilde).

    x_T: (B, ...) starting noise. timesteps: descending ints; None = all T steps; an int n =
    ``schedule.timesteps(n)`` ("leading"). With a subset of timesteps each step uses the
    respaced beta_t = 1 - a_t/a_s, as diffusers does. Returns x_0 (B, ...).
    """
    ts = _timesteps(schedule, timesteps)
    a = schedule.alphas_cumprod.tolist()
    x = x_T
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        a_t, a_s = a[t], (a[s] if s >= 0 else 1.0)
        beta = 1 - a_t / a_s
        _, x0 = _predict(eps_fn, x, t, a_t, clip_x0)
        # posterior mean, DDPM eq. 7: mu = sqrt(a_s) beta/(1-a_t) x0 + sqrt(1-beta) (1-a_s)/(1-a_t) x_t
        mean = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x
        if s >= 0:
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
                clip_x0: float | None = None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta=0 is deterministic, eta=1 matches DDPM's variance.

    x_T: (B, ...). timesteps: descending ints, or an int n = ``schedule.timesteps(n)``.
    The last step goes to a_s = 1 (diffusers' ``set_alpha_to_one=True``). With clip_x0 the
    clipped x0 also yields the eps used for the direction term (``use_clipped_model_output``).
    """
    if timesteps is None:
        raise ValueError("sample_ddim needs timesteps (a list, or a number of steps)")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ts = _timesteps(schedule, timesteps)
    a = schedule.alphas_cumprod.tolist()
    x = x_T
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        a_t, a_s = a[t], (a[s] if s >= 0 else 1.0)
        eps, x0 = _predict(eps_fn, x, t, a_t, clip_x0)
        # sigma_t(eta) = eta sqrt((1-a_s)/(1-a_t)) sqrt(1 - a_t/a_s)
        std = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        # x_s = sqrt(a_s) x0 + sqrt(1 - a_s - std²) eps + std z
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - std**2, 0.0)) * eps
        if eta > 0:
            x = x + std * randn(x.shape, generator, x.dtype, x.device)
        if callback is not None:
            callback(StepInfo(i, len(ts), t, x, x0))
    return x
