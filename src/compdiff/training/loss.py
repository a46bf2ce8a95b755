"""The training loss as a callable object that takes the network (EDM's habit): the network
knows nothing of noise, the schedule does the forward process and the target."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import Tensor

from compdiff.schedule import Prediction, Schedule


@dataclass(frozen=True)
class DiffusionLoss:
    """``loss(net, x0, t, cond, noise) -> scalar``: x_t = α_t x0 + σ_t ε by the schedule, then the
    mean squared error between ``net(x_t, t, cond)`` and the target of the given parametrisation
    (ε for "epsilon"; v, x0 or the velocity otherwise, all from ``Schedule.prediction_from``).

    x0, noise: (B, C, H, W); t: (B,) in the schedule's time; cond: (B, ...) condition rows.
    ``autocast`` wraps the network call (e.g. accelerate's bf16 autocast); the loss is in float32.
    """

    schedule: Schedule
    prediction: Prediction = "epsilon"

    def __call__(self, net: Callable[[Tensor, Tensor, Tensor], Tensor], x0: Tensor, t: Tensor, cond: Tensor,
                 noise: Tensor, autocast: Callable[[], ContextManager] = nullcontext) -> Tensor:
        x_t = self.schedule.add_noise(x0, noise, t)  # q(x_t | x_0)
        with autocast():
            pred = net(x_t, t, cond)
        target = self.schedule.prediction_from(x0, noise, t, x_t, self.prediction)
        return torch.nn.functional.mse_loss(pred.float(), target.float())
