"""The noise schedule: one frozen object, and the prediction conversions.

Variance-preserving forward process (DDPM): for an integer timestep t in [0, T),

    x_t = sqrt(a_t) * x_0 + sqrt(1 - a_t) * eps,     a_t = alphas_cumprod[t]

Notation below: alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t).
Every conversion between the eps, x0, v and score parametrisations lives here,
written once; other layers call these methods.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Spacing = Literal["leading", "trailing", "linspace"]
Prediction = Literal["epsilon", "v_prediction", "sample"]


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """alphas_cumprod: (T,) float64, strictly decreasing in (0, 1]."""

    alphas_cumprod: Tensor

    def __post_init__(self) -> None:
        a = torch.as_tensor(self.alphas_cumprod).detach().to("cpu", torch.float64).clone()
        if a.ndim != 1 or a.numel() < 1:
            raise ValueError(f"alphas_cumprod must be 1-D and non-empty, got shape {tuple(a.shape)}")
        if not torch.all((a > 0) & (a <= 1)):
            raise ValueError("alphas_cumprod must lie in (0, 1]")
        if a.numel() > 1 and not torch.all(a[1:] < a[:-1]):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        object.__setattr__(self, "alphas_cumprod", a)

    # ---- constructors -------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """DDPM's linear betas (Ho et al. 2020), computed in float64."""
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal (2021) eq. 17: abar(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2),
        with beta_t = 1 - abar(t+1)/abar(t) clipped at max_beta (their sec. 3.2)."""
        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return cls(torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float64), dim=0))

    @classmethod
    def from_diffusers(cls, scheduler: Any) -> NoiseSchedule:
        """Take the exact alphas_cumprod of a diffusers scheduler object (DDPM, DDIM, ...)."""
        a = getattr(scheduler, "alphas_cumprod", None)
        if a is None:
            raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod; cannot build a NoiseSchedule from it")
        return cls(torch.as_tensor(a))

    # ---- timesteps ----------------------------------------------------------
    @property
    def T(self) -> int:
        return self.alphas_cumprod.numel()

    def timesteps(self, n: int, spacing: Spacing = "leading", offset: int = 0) -> Tensor:
        """n descending integer timesteps, spaced as diffusers names them:
        "leading": 0, T//n, 2·T//n, ... (+offset) reversed; "trailing": T-1, T-1-T/n, ... rounded;
        "linspace": round(linspace(0, T-1, n)) reversed."""
        T = self.T
        if not 1 <= n <= T:
            raise ValueError(f"number of steps must be in [1, {T}], got {n}")
        if spacing == "leading":
            ts = (np.arange(0, n) * (T // n)).round()[::-1] + offset
        elif spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / n)) - 1
        elif spacing == "linspace":
            ts = np.linspace(0, T - 1, n).round()[::-1]
        else:
            raise ValueError(f"unknown spacing {spacing!r}; expected 'leading', 'trailing' or 'linspace'")
        out = torch.from_numpy(ts.astype(np.int64).copy())
        if out.min() < 0 or out.max() >= T:
            raise ValueError(f"timesteps out of [0, {T}) with offset={offset}")
        return out

    # ---- coefficients ---------------------------------------------------------
    def abar(self, t: Tensor | int) -> Tensor:
        """a_t (float64, on the CPU) for t (B,) or a scalar."""
        return self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long, device="cpu")]

    def alpha_sigma(self, t: Tensor | int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) = (sqrt(a_t), sqrt(1 - a_t)), broadcastable against `like`."""
        a = self.abar(t)
        shape = (-1, *([1] * (like.ndim - 1))) if a.ndim == 1 else ()
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        return (alpha.reshape(shape).to(like.device, like.dtype), sigma.reshape(shape).to(like.device, like.dtype))

    # ---- conversions (each written once) ----------------------------------------
    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """q(x_t | x_0): x_t = alpha_t x_0 + sigma_t eps."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * eps

    def x0_from_eps(self, x_t: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """x_0 = (x_t - sigma_t eps) / alpha_t."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        return (x_t - sigma * eps) / alpha

    def eps_from_x0(self, x_t: Tensor, x0: Tensor, t: Tensor | int) -> Tensor:
        """eps = (x_t - alpha_t x_0) / sigma_t."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        return (x_t - alpha * x0) / sigma

    def v_from_eps(self, x_t: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022) = (eps - sigma_t x_t) / alpha_t."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        return (eps - sigma * x_t) / alpha

    def eps_from_v(self, x_t: Tensor, v: Tensor, t: Tensor | int) -> Tensor:
        """eps = sigma_t x_t + alpha_t v."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        return sigma * x_t + alpha * v

    def score_from_eps(self, x_t: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """grad_x log p_t(x) = -eps / sigma_t."""
        _, sigma = self.alpha_sigma(t, x_t)
        return -eps / sigma

    def eps_from_score(self, x_t: Tensor, score: Tensor, t: Tensor | int) -> Tensor:
        """eps = -sigma_t · score."""
        _, sigma = self.alpha_sigma(t, x_t)
        return -sigma * score

    def eps_from_prediction(self, x_t: Tensor, out: Tensor, t: Tensor | int, prediction: Prediction) -> Tensor:
        """Turn a model output of the given parametrisation into eps."""
        if prediction == "epsilon":
            return out
        if prediction == "v_prediction":
            return self.eps_from_v(x_t, out, t)
        if prediction == "sample":
            return self.eps_from_x0(x_t, out, t)
        raise ValueError(f"unknown prediction type {prediction!r}; expected 'epsilon', 'v_prediction' or 'sample'")

    # ---- serialisation ------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {"alphas_cumprod": self.alphas_cumprod.tolist()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoiseSchedule:
        return cls(torch.tensor(config["alphas_cumprod"], dtype=torch.float64))
