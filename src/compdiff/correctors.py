"""MCMC correctors: Langevin-type steps at one noise level, for ANY prediction function.

Why: at t > 0 the composed eps (a weighted sum of scores) is not the score of the noised
product distribution, so plugging it into a reverse process does not sample the product
(Du et al., "Reduce, Reuse, Recycle", ICML 2023). What the composed eps IS, at every
level t, is the exact score of the unnormalised density p̃_t ∝ Π_i p_t(x|c_i)^{w_i}·p_t(x)^{1-Σw},
and p̃_t → the product as t → 0. A few MCMC steps targeting p̃_t at each level (a
predictor-corrector sampler, Song et al. 2021) pull the samples back onto it.

Use: ``Corrector("ula", steps=2, step_size=1.0, range=(0.5, 1.0))`` passed to any sampler as
``corrector=``. At each level i of a run of n levels (0 = the noisiest) with
lo <= i/n < hi, the sampler first lets the corrector move x, then takes its ordinary step
from the corrected x, reusing the corrector's last model output. A corrected level costs
``steps`` extra model evaluations. Corrector noise comes from the sampler's generator (per
sample when it is a list).

Score: s(x) = −ε̂(x, t)/σ_t (``Schedule.score_from_eps``), with ε̂ from the model output
through the schedule (``Schedule.split``; for a velocity model ε̂ = x + (1 − t)·u, finite
at every t including t = 1). The floor near t = 0: samplers evaluate only at listed times,
and every schedule keeps those away from σ = 0 (a VP table has a_t < 1 for t ≥ 1 and
σ_0 = sqrt(1 − a_0) > 0; FlowSchedule's times stop at t_min > 0), so σ_t > 0 wherever a
corrector runs, and h_t·s = −c·σ_t·ε̂ stays bounded as σ_t → 0.

Step-size rule (one number, ``c`` = ``step_size``, relative to the noise level):

    h_t = c · σ_t²

* ULA (unadjusted Langevin), per step:   x ← x + h_t·s(x) + sqrt(2 h_t)·z,
  i.e. x ← x − c σ_t ε̂(x, t) + sqrt(2c) σ_t z: scale-free, no data scale needed.
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

Defaults, chosen on the analytic Gaussian targets (docs/operators.md,
bench/analytic_correctors.py): c = 1.0, 2 steps, on the cleaner half of the run
(0.5, 1.0), damping 0.5. Correcting only the noisier half changes nothing measurable
there; the last levels are where the plain sampler's error is made and fixed.

A new corrector is one kernel function with the signature of :func:`ula` plus one entry in
``KERNELS``. No Metropolis adjustment (MALA/HMC would need an energy; see docs/operators.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from compdiff.denoiser import EpsFn
from compdiff.errors import InputError
from compdiff.schedule import Schedule

Noise = Callable[[], Tensor]


def step_size(schedule: Schedule, t: float, c: float) -> float:
    """h_t = c · σ_t² (see the module docstring)."""
    _, sigma = schedule.alpha_sigma(t)
    return c * sigma * sigma


def _score(schedule: Schedule, x: Tensor, out: Tensor, tt: Tensor) -> Tensor:
    """s(x) = −ε̂/σ_t, ε̂ from the model output ``out`` through the schedule (σ_t > 0 here)."""
    return schedule.score_from_eps(x, schedule.split(x, out, tt)[1], tt)


def ula(fn: EpsFn, schedule: Schedule, x: Tensor, t: float, out: Tensor, steps: int, c: float,
        damping: float, noise: Noise) -> tuple[Tensor, Tensor]:
    """``steps`` ULA steps at time t. x (B, ...); out = fn(x, t), already computed.
    Returns (x, fn at the new x). ``damping`` is not used."""
    tt = schedule.t_batch(t, x.shape[0], x.device)
    h = step_size(schedule, t, c)
    for _ in range(steps):
        x = x + h * _score(schedule, x, out, tt) + math.sqrt(2 * h) * noise()  # x ← x + h s(x) + sqrt(2h) z
        out = fn(x, tt)
    return x, out


def uhmc(fn: EpsFn, schedule: Schedule, x: Tensor, t: float, out: Tensor, steps: int, c: float,
         damping: float, noise: Noise) -> tuple[Tensor, Tensor]:
    """``steps`` U-HMC steps (partial refresh + one leapfrog step each) at time t.
    x (B, ...); out = fn(x, t), already computed. Returns (x, fn at the new x)."""
    tt = schedule.t_batch(t, x.shape[0], x.device)
    delta = math.sqrt(2 * step_size(schedule, t, c))
    v = noise() if damping > 0 else x.new_zeros(x.shape)  # fresh momentum at each level
    score = _score(schedule, x, out, tt)
    for _ in range(steps):
        v = damping * v + math.sqrt(1 - damping**2) * noise()  # partial momentum refresh
        v = v + (delta / 2) * score  # leapfrog: half kick
        x = x + delta * v  # drift
        out = fn(x, tt)
        score = _score(schedule, x, out, tt)
        v = v + (delta / 2) * score  # half kick
    return x, out


Kernel = Callable[[EpsFn, Schedule, Tensor, float, Tensor, int, float, float, Noise], tuple[Tensor, Tensor]]
#: corrector name -> kernel; a new corrector is one function and one entry here
KERNELS: dict[str, Kernel] = {"ula": ula, "uhmc": uhmc}
CORRECTORS = tuple(KERNELS)


@dataclass(frozen=True)
class Corrector:
    """One MCMC corrector, passed to a sampler as ``corrector=`` (see the module docstring).

    kind: a name in ``KERNELS`` ("ula", "uhmc"); steps: corrector steps per corrected level;
    step_size: c in h_t = c·σ_t²; range: (lo, hi), the fraction of the run's levels to correct
    (0 = the noisiest); damping: U-HMC's momentum persistence γ in [0, 1).
    Bad values raise InputError when the object is made, before any sampling.
    """

    kind: str
    steps: int = 2
    step_size: float = 1.0
    range: tuple[float, float] = (0.5, 1.0)
    damping: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in KERNELS:
            raise InputError(f"unknown corrector {self.kind!r}; accepted: {', '.join(KERNELS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise InputError(f"corrector steps must be an integer >= 1, got {self.steps!r}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise InputError(f"corrector step size must be a finite number > 0, got {self.step_size}")
        lo, hi = (float(v) for v in self.range)
        if not 0.0 <= lo < hi <= 1.0:
            raise InputError(f"corrector range must be (lo, hi) with 0 <= lo < hi <= 1, got {self.range}")
        if not 0.0 <= self.damping < 1.0:
            raise InputError(f"corrector damping must lie in [0, 1), got {self.damping}")
        object.__setattr__(self, "range", (lo, hi))

    def applies(self, i: int, n: int) -> bool:
        """Whether level i of n (0 = the noisiest) is corrected."""
        return self.range[0] <= i / n < self.range[1]

    def __call__(self, fn: EpsFn, schedule: Schedule, x: Tensor, t: float, out: Tensor,
                 noise: Noise) -> tuple[Tensor, Tensor]:
        """Correct x at time t; out = fn(x, t). Returns (x, fn at the new x)."""
        return KERNELS[self.kind](fn, schedule, x, t, out, self.steps, self.step_size, self.damping, noise)
