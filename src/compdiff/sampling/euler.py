"""Euler: the first-order step of the probability-flow ODE (Song et al. 2021, eq. 13)."""
from __future__ import annotations

from torch import Tensor

from compdiff.correctors import Corrector
from compdiff.denoiser import EpsFn
from compdiff.sampling.base import Callback, Generator, Run, register_sampler
from compdiff.schedule import Schedule, Timesteps


@register_sampler("euler")
def sample_euler(fn: EpsFn, x_T: Tensor, schedule: Schedule, timesteps: Timesteps, *,
                 generator: Generator = None, callback: Callback | None = None, clip_x0: float | None = None,
                 corrector: Corrector | None = None) -> Tensor:
    """x_T: (B, ...) -> x_0, deterministic (unless a corrector adds noise). One Euler step of the
    probability-flow ODE per listed time, in the schedule's own parametrisation:

    * continuous-time schedules (rectified flow): the ODE dx/dt = α'(t) x̂_0 + σ'(t) ε̂ in the
      schedule's own t, x_s = x_t + (s − t)·dx/dt; for rectified flow dx/dt is the predicted
      velocity ε̂ − x̂_0 (diffusers' FlowMatchEulerDiscreteScheduler).
    * discrete VP tables, which have no time derivative: the ODE in y = x/α and τ = σ/α, where it
      reads dy/dτ = ε̂ (Karras et al. 2022, eq. 4 with s(t) = α), so y_s = y_t + (τ_s − τ_t)·ε̂ and
      x_s = α_s·y_s (diffusers' EulerDiscreteScheduler, which keeps y instead of x).

    Holding (x̂_0, ε̂) fixed, both steps land exactly on α_s x̂_0 + σ_s ε̂ — DDIM with η = 0 — because
    x moves linearly in those variables; the two names stay because users look for both.
    """
    run = Run(fn, schedule, timesteps, generator, callback, clip_x0, corrector)
    continuous = _has_derivatives(schedule)
    x = x_T
    for lv in run.levels():
        x, x0, eps = run.predict(x, lv)
        if continuous:
            s = 0.0 if lv.s is None else lv.s
            x = x + (s - lv.t) * schedule.velocity_from_x0_eps(x0, eps, lv.t, x)  # x_s = x_t + (s − t) dx/dt
        else:
            y = x / lv.alpha_t  # y_t = x_t/α_t
            y = y + (lv.sigma_s / lv.alpha_s - lv.sigma_t / lv.alpha_t) * eps  # y_s = y_t + (τ_s − τ_t) ε̂
            x = lv.alpha_s * y  # x_s = α_s y_s
        run.done(lv, x, x0)
    return x


def _has_derivatives(schedule: Schedule) -> bool:
    try:
        schedule.derivatives(0.5)
    except ValueError:
        return False
    return True
