"""MCMC correctors: Langevin-type steps at one noise level, for ANY ``eps_fn(x, t)``.

Why: at t > 0 the composed eps (a weighted sum of scores) is not the score of the noised
product distribution, so plugging it into a reverse process does not sample the product
(Du et al., "Reduce, Reuse, Recycle", ICML 2023). What the composed eps IS, at every
level t, is the exact score of the unnormalised density p̃_t ∝ Π_i p_t(x|c_i)^{w_i}·p_t(x)^{1-Σw},
and p̃_t → the product as t → 0. A few MCMC steps targeting p̃_t at each level (a
predictor-corrector sampler, Song et al. 2021) pull the samples back onto it.

Score: s(x) = −eps(x, t)/σ_t (``NoiseSchedule.score_from_eps``).

Step-size rule (one number, ``c`` = ``corrector_step_size``, relative to the noise level):

    h_t = c · σ_t²        (σ_t² = 1 − a_t)

* ULA (unadjusted Langevin), per step:   x ← x + h_t·s(x) + sqrt(2 h_t)·z.
  In eps terms x ← x − c σ_t eps(x, t) + sqrt(2c) σ_t z: scale-free, no data scale needed.
* U-HMC (unadjusted underdamped Langevin / HMC with partial momentum refresh, RRR's
  "UHA"), unit mass, leapfrog step δ_t = sqrt(2 h_t); momentum v ~ N(0, I) drawn fresh at
  each level, then per step:
      v ← γ v + sqrt(1 − γ²) ξ                      (partial refresh, γ = damping)
      v ← v + (δ/2) s(x);  x ← x + δ v;  v ← v + (δ/2) s(x)   (leapfrog)
  With γ = 0 one U-HMC step is exactly one ULA step with the same h_t and noise.

Stability: on a Gaussian p̃_t with precision Λ, ULA contracts iff h_t·λ_max(Λ) < 2, i.e.
c < 2 / max(σ_t² λ_max). σ_t²λ is ≈ 1 for one concept, but a composition with a total
positive guidance weight W can reach ≈ W in directions where the concepts are sharper than
the unconditional model (1.36 for K = 2 and 1.87 for K = 3 in the analytic tests, so
c ≤ 1 there); lower c for large guidance scales.

Cost: each step needs eps at its new point; the last one is reused by the predictor, so
k corrector steps cost exactly k extra model evaluations at that level (both kinds).
Randomness comes through ``noise()``: the sampler passes its per-sample-generator noise.
No Metropolis adjustment (MALA/HMC would need an energy; see docs/operators.md).
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor

from compdiff.denoiser import EpsFn
from compdiff.schedule import NoiseSchedule

Corrector = Literal["ula", "uhmc"]
CORRECTORS = ("ula", "uhmc")
Noise = Callable[[], Tensor]


def step_size(schedule: NoiseSchedule, t: int, c: float) -> float:
    """h_t = c · σ_t² (see the module docstring)."""
    return c * (1.0 - float(schedule.alphas_cumprod[t]))


def ula(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, t: int, eps: Tensor, steps: int, c: float,
        noise: Noise) -> tuple[Tensor, Tensor]:
    """``steps`` ULA steps at timestep t. x (B, ...); eps = eps_fn(x, t), already computed.
    Returns (x, eps at the new x)."""
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    h = step_size(schedule, t, c)
    for _ in range(steps):
        score = schedule.score_from_eps(x, eps, tt)
        x = x + h * score + math.sqrt(2 * h) * noise()  # x ← x + h s(x) + sqrt(2h) z
        eps = eps_fn(x, tt)
    return x, eps


def uhmc(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, t: int, eps: Tensor, steps: int, c: float,
         damping: float, noise: Noise) -> tuple[Tensor, Tensor]:
    """``steps`` U-HMC steps (partial refresh + one leapfrog step each) at timestep t.
    x (B, ...); eps = eps_fn(x, t), already computed. Returns (x, eps at the new x)."""
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    delta = math.sqrt(2 * step_size(schedule, t, c))
    v = noise() if damping > 0 else torch.zeros_like(x)  # fresh momentum at each level
    score = schedule.score_from_eps(x, eps, tt)
    for _ in range(steps):
        v = damping * v + math.sqrt(1 - damping**2) * noise()  # partial momentum refresh
        v = v + (delta / 2) * score  # leapfrog: half kick
        x = x + delta * v  # drift
        eps = eps_fn(x, tt)
        score = schedule.score_from_eps(x, eps, tt)
        v = v + (delta / 2) * score  # half kick
    return x, eps
