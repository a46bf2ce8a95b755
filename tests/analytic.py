"""Gaussian concepts with a closed-form noise prediction (a test helper, shared by tests).

Concept j is N(mu_j, s_j² I) in data space; under the VP forward process
x_t = alpha x_0 + sigma eps its noised density is N(alpha mu_j, (alpha² s_j² + sigma²) I), so

    eps_j(x, t) = -sigma ∇ log p_t(x | j) = sigma (x - alpha mu_j) / (alpha² s_j² + sigma²)   (exact).

For any schedule (α, σ) the posterior mean is known too,
E[x_0 | x_t, j] = mu_j + alpha s_j² (x - alpha mu_j) / (alpha² s_j² + sigma²), finite where alpha = 0,
and the denoiser returns the schedule's own parametrisation (eps for the VP tables, the
velocity alpha' x0 + sigma' eps for rectified flow), built from those two exact quantities.

Concept 0 is the unconditional model (a broad Gaussian). Conditions are the concept index
as a (K, 1) float tensor; concept text is the index ("1", "2", ...).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from compdiff.schedule import NoiseSchedule, Schedule


@dataclass
class GaussianConcepts:
    schedule: Schedule
    means: Tensor  # (J, D) float64, row 0 = unconditional
    stds: Tensor  # (J,) float64

    # Denoiser
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        j = cond[:, 0].long()
        alpha, sigma = self.schedule.alpha_sigma(t, x)
        var = self.stds[j].unsqueeze(1).to(x.dtype) ** 2
        mu = self.means[j].to(x.dtype)
        total = alpha**2 * var + sigma**2
        eps = sigma * (x - alpha * mu) / total
        if self.schedule.prediction == "epsilon":
            return eps
        x0 = mu + alpha * var * (x - alpha * mu) / total
        return self.schedule.prediction_from(x0, eps, t, x)

    # ConceptEncoder
    def encode(self, concepts: list[str]) -> Tensor:
        return torch.tensor([[float(int(c))] for c in concepts], dtype=torch.float64)

    def null(self) -> Tensor:
        return torch.zeros(1, 1, dtype=torch.float64)

    def product(self, weights: dict[int, float]) -> tuple[Tensor, float]:
        """Closed form of p_0^(1 - Σw) Π p_j^(w_j) (the distribution AND defines at t = 0):
        (mean (D,), variance)."""
        W = sum(weights.values())
        lam = (1 - W) / self.stds[0] ** 2 + sum(w / self.stds[j] ** 2 for j, w in weights.items())
        if lam <= 0:
            raise ValueError("the weighted product is not normalisable")
        num = (1 - W) * self.means[0] / self.stds[0] ** 2
        num = num + sum(w * self.means[j] / self.stds[j] ** 2 for j, w in weights.items())
        return num / lam, float(1 / lam)

    def composed_linear(self, weights: dict[int, float], t: int) -> tuple[float, Tensor]:
        """The composed eps at timestep t is A x + b per coordinate (all concepts isotropic): (A, b (D,))."""
        a = float(self.schedule.alphas_cumprod[t])
        alpha, sigma = a**0.5, (1 - a) ** 0.5
        coef = {0: 1 - sum(weights.values()), **weights}
        A = sum(c * sigma / (a * self.stds[j] ** 2 + sigma**2) for j, c in coef.items())
        b = sum(-c * sigma * alpha * self.means[j] / (a * self.stds[j] ** 2 + sigma**2) for j, c in coef.items())
        return float(A), b


def default_concepts(schedule: NoiseSchedule) -> GaussianConcepts:
    return GaussianConcepts(
        schedule,
        means=torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64),
        stds=torch.tensor([2.0, 0.5, 0.7, 0.6], dtype=torch.float64),
    )
