"""DDIM (Song et al. 2021): eta = 0 is deterministic, eta = 1 has DDPM's variance."""
from __future__ import annotations

import math

from torch import Tensor

from compdiff.correctors import Corrector
from compdiff.denoiser import EpsFn
from compdiff.errors import InputError
from compdiff.sampling.base import Callback, Generator, Run, register_sampler
from compdiff.schedule import Schedule, Timesteps


@register_sampler("ddim")
def sample_ddim(fn: EpsFn, x_T: Tensor, schedule: Schedule, timesteps: Timesteps, *,
                generator: Generator = None, callback: Callback | None = None, clip_x0: float | None = None,
                corrector: Corrector | None = None, eta: float = 0.0) -> Tensor:
    """x_T: (B, ...) -> x_0. timesteps: descending times, or a number of steps. The last step goes
    to the clean end, α = 1, σ = 0 (diffusers' ``set_alpha_to_one=True``). With clip_x0 the
    clipped x̂_0 also yields the ε̂ of the direction term (``use_clipped_model_output``).
    A corrector makes even eta = 0 stochastic (its noise comes from ``generator``).

    DDIM eq. 12, for any α, σ (σ_t(η) of eq. 16 is η times DDPM's posterior std):
        std = η·sqrt(σ²_{t|s} σ_s²/σ_t²),   σ²_{t|s} = σ_t² − (α_t/α_s)² σ_s²
        x_s = α_s x̂_0 + sqrt(σ_s² − std²)·ε̂ + std·z
    """
    if not (math.isfinite(eta) and eta >= 0):
        raise InputError(f"eta must be a finite number >= 0, got {eta}")
    run = Run(fn, schedule, timesteps, generator, callback, clip_x0, corrector)
    x = x_T
    for lv in run.levels():
        x, x0, eps = run.predict(x, lv)
        var_ts = lv.sigma_t**2 - (lv.alpha_t / lv.alpha_s) ** 2 * lv.sigma_s**2
        std = eta * math.sqrt(max(var_ts * lv.sigma_s**2 / lv.sigma_t**2, 0.0))
        x = lv.alpha_s * x0 + math.sqrt(max(lv.sigma_s**2 - std**2, 0.0)) * eps
        if eta > 0:
            x = x + std * run.noise(x)
        run.done(lv, x, x0)
    return x
