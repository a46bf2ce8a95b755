"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2): multistep, data prediction."""
from __future__ import annotations

import math

from torch import Tensor

from compdiff.correctors import Corrector
from compdiff.denoiser import EpsFn
from compdiff.sampling.base import Callback, Generator, Run, register_sampler
from compdiff.schedule import Schedule, Timesteps

def _lam(alpha: float, sigma: float) -> float:
    """λ = log(α/σ), the half log-SNR: −inf at α = 0 (pure noise), +inf at σ = 0 (clean)."""
    if alpha == 0:
        return -math.inf
    if sigma == 0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


@register_sampler("dpmpp-2m")
def sample_dpmpp_2m(fn: EpsFn, x_T: Tensor, schedule: Schedule, timesteps: Timesteps, *,
                    generator: Generator = None, callback: Callback | None = None,
                    clip_x0: float | None = None, corrector: Corrector | None = None) -> Tensor:
    """x_T: (B, ...) -> x_0, deterministic (unless a corrector adds noise). From time t to s, with
    h = λ_s − λ_t and the data predictions x̂_0 of this step (D_0) and the previous one (D_1),
    r = h_prev/h (Lu et al. 2022, DPM-Solver++ eq. 9 and Alg. 2):

        first order:   x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D_0
        second order:  the same with D = D_0 + (1/(2r)) (D_0 − D_1)

    The first step is first order (no history); so is the last, to σ = 0, where e^{−h} = 0 and
    x_s = x̂_0 whatever the order: diffusers' DPMSolverMultistepScheduler with
    ``final_sigmas_type="zero"``, which this matches step for step (tests/test_sampling_equivalence.py).
    """
    run = Run(fn, schedule, timesteps, generator, callback, clip_x0, corrector)
    x, prev, h_prev = x_T, None, math.nan
    for lv in run.levels():
        x, x0, _ = run.predict(x, lv)
        h = _lam(lv.alpha_s, lv.sigma_s) - _lam(lv.alpha_t, lv.sigma_t)
        exp_neg_h = (lv.alpha_t * lv.sigma_s) / (lv.sigma_t * lv.alpha_s)  # e^{−h}, finite at both ends
        first = prev is None or lv.last
        d = x0 if first else x0 + (h / h_prev) / 2 * (x0 - prev)  # 1/(2r) = h/(2 h_prev)
        x = (lv.sigma_s / lv.sigma_t) * x - (lv.alpha_s * (exp_neg_h - 1)) * d
        prev, h_prev = x0, h
        run.done(lv, x, x0)
    return x
