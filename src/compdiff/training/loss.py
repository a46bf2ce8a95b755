"""The training loss as a callable object that takes the network (EDM's habit): the network
knows nothing of noise, the schedule does the forward process and the target."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import Tensor

from compdiff.schedule import Prediction, Schedule

#: loss weightings over noise levels
WEIGHTINGS = ("none", "min-snr")


@dataclass(frozen=True)
class DiffusionLoss:
    """``loss(net, x0, t, cond, noise) -> scalar``: x_t = α_t x0 + σ_t ε by the schedule, then the
    mean squared error between ``net(x_t, t, cond)`` and the target of the given parametrisation
    (ε for "epsilon"; v, x0 or the velocity otherwise, all from ``Schedule.prediction_from``),
    each sample weighted by ``weights(t)`` ("none": all 1, the plain mean; "min-snr": see there).

    x0, noise: (B, C, H, W); t: (B,) in the schedule's time; cond: (B, ...) condition rows.
    ``autocast`` wraps the network call (e.g. accelerate's bf16 autocast); the loss is in float32.
    """

    schedule: Schedule
    prediction: Prediction = "epsilon"
    weighting: str = "none"  # "none" | "min-snr"
    snr_gamma: float = 5.0

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")

    def __call__(self, net: Callable[[Tensor, Tensor, Tensor], Tensor], x0: Tensor, t: Tensor, cond: Tensor,
                 noise: Tensor, autocast: Callable[[], ContextManager] = nullcontext) -> Tensor:
        x_t = self.schedule.add_noise(x0, noise, t)  # q(x_t | x_0)
        with autocast():
            pred = net(x_t, t, cond)
        target = self.schedule.prediction_from(x0, noise, t, x_t, self.prediction)
        if self.weighting == "none":
            return torch.nn.functional.mse_loss(pred.float(), target.float())
        per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        return (self.weights(t).to(per_sample.device) * per_sample).mean()

    def weights(self, t: Tensor) -> Tensor:
        """Per-sample loss weights (B,) float32. "min-snr" (Hang et al. 2023, "Efficient Diffusion
        Training via Min-SNR Weighting Strategy"): with SNR = α²/σ², the x0-space weight min(SNR, γ)
        written in the network's parametrisation, i.e. min(SNR, γ)/SNR for ε and
        min(SNR, γ)/(SNR + 1) for v. Low-noise levels (SNR > γ) count less."""
        if self.weighting == "none":
            return torch.ones(t.shape[0])
        a, s = self.schedule.alpha_sigma(t)  # float64 (B,)
        snr = (a / s) ** 2
        clipped = snr.clamp(max=self.snr_gamma)
        w = clipped / snr if self.prediction == "epsilon" else clipped / (snr + 1)
        return w.float()
