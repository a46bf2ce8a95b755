"""The forward process as one frozen object, and every prediction conversion, written once.

A schedule describes x_t = α(t)·x_0 + σ(t)·ε over its own time variable t:

* :class:`NoiseSchedule`: a discrete variance-preserving table (DDPM). t is an integer in
  [0, T), α_t = sqrt(a_t), σ_t = sqrt(1 − a_t), a_t = alphas_cumprod[t]. A fractional t
  (as diffusers' Euler schedulers ask for) interpolates σ/α linearly between table entries.
* :class:`FlowSchedule`: rectified flow (Liu et al. 2023; SD3 and Flux). t is a float in
  [0, 1], α(t) = 1 − t, σ(t) = t, with derivatives α' = −1, σ' = 1.

The parametrisations of a model's output, all affine in it for fixed (x, t):

    eps        ε
    sample     x̂_0
    v          α ε − σ x̂_0                       (Salimans & Ho 2022; "v_prediction")
    velocity   α' x̂_0 + σ' ε = dx/dt              (flow matching; continuous schedules only)
    score      ∇ log p_t(x) = −ε / σ

``schedule.prediction`` names the parametrisation that prediction functions over this
schedule return (``"epsilon"`` for the VP tables, ``"velocity"`` for rectified flow), and
:meth:`Schedule.split` turns such an output into the pair (x̂_0, ε̂) that every sampler and
corrector works with. Because each conversion is affine with an intercept that does not
depend on the condition, composing predictions (compdiff.compose) gives the same result in
any of these spaces; the split is where the space stops mattering.

Scalars in, scalars out: with a Python number t, ``alpha_sigma`` returns Python floats
(float64) and the conversions do scalar arithmetic, which is what the samplers use; with a
tensor t (B,), they return tensors broadcastable against x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence, Union

import numpy as np
import torch
from torch import Tensor

Spacing = Literal["leading", "trailing", "linspace"]
Prediction = Literal["epsilon", "v_prediction", "sample", "velocity"]
PREDICTIONS = ("epsilon", "v_prediction", "sample", "velocity")
Time = Union[int, float, Tensor]
Coef = Union[float, Tensor]
#: timesteps as samplers accept them: a number of steps, or descending times, or None (see Schedule.run)
Timesteps = Union[int, Sequence[Union[int, float]], Tensor, None]


class Schedule:
    """Base of the schedules: α(t), σ(t) and the conversions between parametrisations.

    Subclasses define ``_alpha_sigma64(t: Tensor float64 (B,)) -> (alpha, sigma)``, ``timesteps``,
    ``time_dtype`` (dtype of the t a model receives), ``prediction``, and ``_check_times``.
    """

    prediction: Prediction = "epsilon"
    time_dtype: torch.dtype = torch.int64

    # ---- α and σ ----------------------------------------------------------------------------
    def _alpha_sigma64(self, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def alpha_sigma(self, t: Time, like: Tensor | None = None) -> tuple[Coef, Coef]:
        """(α_t, σ_t): Python floats for a scalar t; for a tensor t (B,), tensors shaped (B, 1, ...)
        to broadcast against ``like`` (in its dtype and device)."""
        if not isinstance(t, Tensor) or t.ndim == 0:
            a, s = self._alpha_sigma64(torch.as_tensor([float(t)], dtype=torch.float64))
            return float(a[0]), float(s[0])
        a, s = self._alpha_sigma64(t.detach().to("cpu", torch.float64))
        if like is None:
            return a, s
        shape = (-1, *([1] * (like.ndim - 1)))
        return a.reshape(shape).to(like.device, like.dtype), s.reshape(shape).to(like.device, like.dtype)

    def derivatives(self, t: Time, like: Tensor | None = None) -> tuple[Coef, Coef]:
        """(dα/dt, dσ/dt): only continuous-time schedules have them."""
        raise ValueError(f"{type(self).__name__} is a discrete table with no time derivative; velocity "
                         "conversions need a continuous-time schedule such as FlowSchedule")

    # ---- conversions (each written once) ------------------------------------------------------
    def add_noise(self, x0: Tensor, eps: Tensor, t: Time) -> Tensor:
        """q(x_t | x_0): x_t = α_t x_0 + σ_t ε."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * eps

    def x0_from_eps(self, x_t: Tensor, eps: Tensor, t: Time) -> Tensor:
        """x_0 = (x_t − σ_t ε) / α_t."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        return (x_t - sigma * eps) / alpha

    def eps_from_x0(self, x_t: Tensor, x0: Tensor, t: Time) -> Tensor:
        """ε = (x_t − α_t x_0) / σ_t."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        return (x_t - alpha * x0) / sigma

    def v_from_x0_eps(self, x0: Tensor, eps: Tensor, t: Time, like: Tensor) -> Tensor:
        """v = α_t ε − σ_t x_0."""
        alpha, sigma = self.alpha_sigma(t, like)
        return alpha * eps - sigma * x0

    def x0_eps_from_v(self, x_t: Tensor, v: Tensor, t: Time) -> tuple[Tensor, Tensor]:
        """Solve x_t = α x_0 + σ ε, v = α ε − σ x_0: x_0 = (α x_t − σ v)/(α² + σ²), ε = (σ x_t + α v)/(α² + σ²)."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        norm = alpha * alpha + sigma * sigma
        return (alpha * x_t - sigma * v) / norm, (sigma * x_t + alpha * v) / norm

    def velocity_from_x0_eps(self, x0: Tensor, eps: Tensor, t: Time, like: Tensor) -> Tensor:
        """dx/dt = α'(t) x_0 + σ'(t) ε (the flow-matching target)."""
        da, ds = self.derivatives(t, like)
        return da * x0 + ds * eps

    def x0_eps_from_velocity(self, x_t: Tensor, u: Tensor, t: Time) -> tuple[Tensor, Tensor]:
        """Solve x_t = α x_0 + σ ε, u = α' x_0 + σ' ε (determinant α σ' − σ α', 1 for rectified flow):
        x_0 = (σ' x_t − σ u)/det, ε = (α u − α' x_t)/det. Finite at t = 1, where α = 0."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        da, ds = self.derivatives(t, x_t)
        det = alpha * ds - sigma * da
        return (ds * x_t - sigma * u) / det, (alpha * u - da * x_t) / det

    def score_from_eps(self, x_t: Tensor, eps: Tensor, t: Time) -> Tensor:
        """∇_x log p_t(x) = −ε / σ_t (σ_t > 0 at every level a sampler evaluates)."""
        _, sigma = self.alpha_sigma(t, x_t)
        return -eps / sigma

    def split(self, x_t: Tensor, out: Tensor, t: Time, prediction: Prediction | None = None) -> tuple[Tensor, Tensor]:
        """(x̂_0, ε̂) from a model output ``out`` in ``prediction`` (default: ``self.prediction``)."""
        kind = prediction or self.prediction
        if kind == "epsilon":
            return self.x0_from_eps(x_t, out, t), out
        if kind == "sample":
            return out, self.eps_from_x0(x_t, out, t)
        if kind == "v_prediction":
            return self.x0_eps_from_v(x_t, out, t)
        if kind == "velocity":
            return self.x0_eps_from_velocity(x_t, out, t)
        raise ValueError(f"unknown prediction type {kind!r}; expected one of {', '.join(PREDICTIONS)}")

    def prediction_from(self, x0: Tensor, eps: Tensor, t: Time, like: Tensor,
                        prediction: Prediction | None = None) -> Tensor:
        """The inverse of :meth:`split`: the output in ``prediction`` whose split is (x0, eps)."""
        kind = prediction or self.prediction
        if kind == "epsilon":
            return eps
        if kind == "sample":
            return x0
        if kind == "v_prediction":
            return self.v_from_x0_eps(x0, eps, t, like)
        if kind == "velocity":
            return self.velocity_from_x0_eps(x0, eps, t, like)
        raise ValueError(f"unknown prediction type {kind!r}; expected one of {', '.join(PREDICTIONS)}")

    def eps_from_prediction(self, x_t: Tensor, out: Tensor, t: Time, prediction: Prediction) -> Tensor:
        """ε from a model output of the given parametrisation."""
        return self.split(x_t, out, t, prediction)[1]

    # ---- time -------------------------------------------------------------------------------------
    def timesteps(self, n: int, spacing: Spacing = "leading", offset: int = 0) -> Tensor:
        raise NotImplementedError

    def _check_times(self, ts: list) -> None:
        raise NotImplementedError

    def run(self, timesteps: Timesteps) -> list:
        """The descending times of a sampler run as Python numbers: an int n gives
        ``timesteps(n)``, a sequence or tensor is checked (in range, strictly decreasing)."""
        if isinstance(timesteps, bool):
            raise ValueError("timesteps must be a number of steps or a sequence of times")
        if isinstance(timesteps, int):
            return self.timesteps(timesteps).tolist()
        if timesteps is None:
            raise ValueError(f"{type(self).__name__}: pass timesteps (a number of steps or a list of times)")
        ts = timesteps.tolist() if isinstance(timesteps, Tensor) else list(timesteps)
        if not ts:
            raise ValueError("timesteps is empty")
        self._check_times(ts)
        if any(b >= a for a, b in zip(ts, ts[1:])):
            raise ValueError("timesteps must be strictly decreasing")
        return ts

    def t_batch(self, t: int | float, batch: int, device: torch.device | str) -> Tensor:
        """(batch,) the time a model receives: ``time_dtype``, or float32 for a fractional time on an
        integer table (what diffusers' Euler schedulers hand the UNet)."""
        dtype = self.time_dtype
        if not dtype.is_floating_point and float(t) != int(t):
            dtype = torch.float32
        return torch.full((batch,), t, dtype=dtype, device=device)


@dataclass(frozen=True, eq=False)
class NoiseSchedule(Schedule):
    """Discrete VP table. alphas_cumprod: (T,) float64, strictly decreasing in (0, 1]."""

    alphas_cumprod: Tensor

    prediction = "epsilon"
    time_dtype = torch.int64

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
        u = torch.arange(T + 1, dtype=torch.float64) / T  # one tensor, no Python loop over T
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def from_diffusers(cls, scheduler: Any) -> NoiseSchedule:
        """Take the exact alphas_cumprod of a diffusers scheduler object (DDPM, DDIM, ...)."""
        a = getattr(scheduler, "alphas_cumprod", None)
        if a is None:
            raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod; cannot build a NoiseSchedule from it")
        return cls(torch.as_tensor(a))

    @property
    def T(self) -> int:
        return self.alphas_cumprod.numel()

    def _alpha_sigma64(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alphas_cumprod
        if torch.equal(t, t.round()):
            abar = a[t.long()]
            return abar.sqrt(), (1 - abar).sqrt()
        # fractional t: interpolate s = σ/α = sqrt((1 − a)/a) linearly, as diffusers' Euler schedulers do
        grid = ((1 - a) / a).sqrt()
        lo = t.floor().long().clamp(0, a.numel() - 1)
        hi = (lo + 1).clamp(max=a.numel() - 1)
        frac = t - lo.double()
        s = (1 - frac) * grid[lo] + frac * grid[hi]
        alpha = 1 / (1 + s**2).sqrt()
        return alpha, s * alpha

    def _check_times(self, ts: list) -> None:
        if any(not 0 <= t <= self.T - 1 for t in ts):
            raise ValueError(f"timesteps must lie in [0, {self.T}), got {ts}")

    def run(self, timesteps: Timesteps) -> list:
        """As :meth:`Schedule.run`; None means every timestep T−1, ..., 0 (the full DDPM chain)."""
        return super().run(self.T if timesteps is None else timesteps)

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


@dataclass(frozen=True, eq=False)
class FlowSchedule(Schedule):
    """Rectified flow: x_t = (1 − t) x_0 + t ε, t in [0, 1]; predictions are velocities ε − x_0.

    shift: the resolution-dependent time shift of SD3 (Esser et al. 2024, eq. 23),
    t ↦ shift·t / (1 + (shift − 1)·t), applied by :meth:`timesteps` (1 = none).
    t_min: the smallest time :meth:`timesteps` reaches before the clean end (diffusers'
    FlowMatchEulerDiscreteScheduler uses 1/num_train_timesteps).
    """

    shift: float = 1.0
    t_min: float = 1e-3

    prediction = "velocity"
    time_dtype = torch.float32

    def __post_init__(self) -> None:
        if not (math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"shift must be a finite number > 0, got {self.shift}")
        if not 0 < self.t_min < 1:
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min}")

    def _alpha_sigma64(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return 1 - t, t.clone()

    def derivatives(self, t: Time, like: Tensor | None = None) -> tuple[Coef, Coef]:
        """α' = −1, σ' = 1 everywhere."""
        return -1.0, 1.0

    def _check_times(self, ts: list) -> None:
        if any(not 0 < t <= 1 for t in ts):
            raise ValueError(f"flow times must lie in (0, 1], got {ts}")

    def shifted(self, t: np.ndarray) -> np.ndarray:
        return self.shift * t / (1 + (self.shift - 1) * t)

    def timesteps(self, n: int, spacing: Spacing = "linspace", offset: int = 0) -> Tensor:
        """n descending times from 1 to t_min (before the shift), float64: "linspace" (diffusers'
        FlowMatchEulerDiscreteScheduler) includes both ends; "trailing" spaces n steps evenly
        down from 1 and stops one step above 0. ``offset`` is not used (VP spacing only)."""
        if n < 1:
            raise ValueError(f"number of steps must be >= 1, got {n}")
        if spacing == "linspace":
            ts = np.linspace(1.0, self.t_min, n)
        elif spacing == "trailing":
            ts = np.arange(n, 0, -1) / n
        else:
            raise ValueError(f"spacing {spacing!r} is not defined for FlowSchedule; use 'linspace' or 'trailing'")
        return torch.from_numpy(self.shifted(ts).copy())


#: the most timesteps a discrete schedule spec may hold (diffusers' models use 1000); a bound on
#: what a model folder's compdiff.json can make compdiff allocate
MAX_T = 100_000
MAX_SHIFT = 1000.0


def _spec_int(spec: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    from compdiff.errors import InputError

    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"'{key}' must be an integer {lo}..{hi:,}, got {str(value)[:40]!r}")
    return value


def _spec_real(spec: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    """A number in the open interval (lo, hi)."""
    from compdiff.errors import InputError

    value = spec.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and lo < value < hi
    if not ok:
        raise InputError(f"'{key}' must be a finite number in ({lo:g}, {hi:g}), got {str(value)[:40]!r}")
    return float(value)


def make_schedule(spec: dict[str, Any]) -> Schedule:
    """A schedule from its JSON spec: {"kind": "cosine"|"linear", "T": int, ...} or {"kind": "flow", "shift": s}.

    Every number is checked (InputError): T an integer 1..MAX_T (never a float, a string or true),
    betas in (0, 1), the shift in (0, MAX_SHIFT). A spec read from a model folder thus cannot make
    compdiff allocate or loop without bound."""
    from compdiff.errors import InputError

    if not isinstance(spec, dict):
        raise InputError(f"a schedule spec must be a JSON object, got {str(spec)[:40]!r}")
    kind = spec.get("kind")
    if kind == "flow":
        return FlowSchedule(_spec_real(spec, "shift", 1.0, 0.0, MAX_SHIFT))
    if kind not in ("cosine", "linear"):
        raise InputError(f"unknown schedule kind {str(kind)[:40]!r}; expected 'cosine', 'linear' or 'flow'")
    T = _spec_int(spec, "T", 1000, 1, MAX_T)
    if kind == "cosine":
        return NoiseSchedule.cosine(T)
    return NoiseSchedule.linear(T, _spec_real(spec, "beta_start", 1e-4, 0.0, 1.0),
                                _spec_real(spec, "beta_end", 0.02, 0.0, 1.0))
