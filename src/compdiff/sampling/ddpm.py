"""DDPM: ancestral sampling (Ho et al. 2020, Alg. 2), variance "fixed small" (β̃)."""
from __future__ import annotations

import math

from torch import Tensor

from compdiff.correctors import Corrector
from compdiff.denoiser import EpsFn
from compdiff.sampling.base import Callback, Generator, Run, register_sampler
from compdiff.schedule import Schedule, Timesteps


@register_sampler("ddpm")
def sample_ddpm(fn: EpsFn, x_T: Tensor, schedule: Schedule, timesteps: Timesteps = None, *,
                generator: Generator = None, callback: Callback | None = None, clip_x0: float | None = None,
                corrector: Corrector | None = None) -> Tensor:
    """x_T: (B, ...) starting noise -> x_0 (B, ...). timesteps: descending times, or a number of
    steps (``schedule.timesteps(n)``); None = every step of a discrete table. With a subset of a
    table's timesteps each step uses the respaced β = 1 − a_t/a_s, as diffusers does.

    Each step samples the Gaussian posterior q(x_s | x_t, x̂_0) of the forward process between
    the listed times t > s (DDPM eq. 6-7, for any α, σ: Kingma et al. 2021, eq. 33):
        α_{t|s} = α_t/α_s,  σ²_{t|s} = σ_t² − α_{t|s}² σ_s²   (VP: σ²_{t|s} = β = 1 − a_t/a_s)
        μ = (α_s σ²_{t|s}/σ_t²) x̂_0 + (α_{t|s} σ_s²/σ_t²) x_t,   var = σ²_{t|s} σ_s²/σ_t² (= β̃)
    and x_s = μ + sqrt(var)·z, with no noise on the last step (s = the clean end).
    """
    run = Run(fn, schedule, timesteps, generator, callback, clip_x0, corrector)
    x = x_T
    for lv in run.levels():
        x, x0, _ = run.predict(x, lv)
        a_ts = lv.alpha_t / lv.alpha_s  # α_{t|s}
        var_ts = lv.sigma_t**2 - a_ts**2 * lv.sigma_s**2  # σ²_{t|s}
        mean = (lv.alpha_s * var_ts / lv.sigma_t**2) * x0 + (a_ts * lv.sigma_s**2 / lv.sigma_t**2) * x
        if not lv.last:
            var = max(var_ts * lv.sigma_s**2 / lv.sigma_t**2, 1e-20)  # β̃, floored like diffusers' DDPMScheduler
            x = mean + math.sqrt(var) * run.noise(x)
        else:
            x = mean
        run.done(lv, x, x0)
    return x
