"""What every sampler shares: noise, per-sample generators, the level loop, the registry.

A sampler is a plain, stateless function with ONE signature (:class:`Sampler`)::

    sampler(fn, x_T, schedule, timesteps, *, generator=None, callback=None, clip_x0=None,
            corrector=None, **options) -> x_0

``fn(x (B, ...), t (B,)) -> prediction (B, ...)`` is condition-free (composition happened
before, in ``compdiff.compose``) and returns the parametrisation named by
``schedule.prediction`` (ε for the VP tables, the velocity for rectified flow); samplers
turn it into (x̂_0, ε̂) with ``schedule.split`` and never convert by hand.

Registering: decorate the function with ``@register_sampler("name")`` in its own module
of this package; ``compdiff.sampling`` imports every module here, and the CLI, the
evaluation and the web app read :data:`SAMPLERS`. Options beyond the common ones (DDIM's
``eta``) are keyword arguments with defaults; :func:`sampler_options` lists them.

Randomness: ``generator`` is one ``torch.Generator`` for the whole batch, or a list with
one generator per sample, so that sample i depends only on its own seed and not on the
batch size (EDM's habit). Stochastic samplers draw noise exactly when and as diffusers'
schedulers draw it, so with the same generator the two agree step for step
(tests/test_sampling_equivalence.py).
"""
from __future__ import annotations

import inspect
from typing import Callable, Iterator, NamedTuple, Protocol, Sequence

import torch
from torch import Tensor

from compdiff.correctors import Corrector
from compdiff.denoiser import EpsFn
from compdiff.errors import InputError
from compdiff.schedule import Schedule, Timesteps

Generator = torch.Generator | Sequence[torch.Generator] | None


class StepInfo(NamedTuple):
    """Passed to ``callback`` after each step. x: the new sample; x0: the step's prediction of x_0."""

    step: int
    num_steps: int
    t: float
    x: Tensor
    x0: Tensor


Callback = Callable[[StepInfo], None]


class Sampler(Protocol):
    """The one sampler signature (see the module docstring)."""

    def __call__(self, fn: EpsFn, x_T: Tensor, schedule: Schedule, timesteps: Timesteps, *,
                 generator: Generator = None, callback: Callback | None = None, clip_x0: float | None = None,
                 corrector: Corrector | None = None) -> Tensor: ...


#: name -> sampler function; filled by @register_sampler in this package's modules
SAMPLERS: dict[str, Sampler] = {}
COMMON = ("fn", "x_T", "schedule", "timesteps", "generator", "callback", "clip_x0", "corrector")


def register_sampler(name: str) -> Callable[[Sampler], Sampler]:
    """Decorator: add a sampler to :data:`SAMPLERS` under ``name`` (a name may be taken once)."""
    def add(fn: Sampler) -> Sampler:
        if name in SAMPLERS:
            raise ValueError(f"a sampler named {name!r} is already registered")
        missing = [p for p in COMMON if p not in inspect.signature(fn).parameters]
        if missing:
            raise TypeError(f"sampler {name!r} lacks the common parameter(s) {', '.join(missing)}")
        SAMPLERS[name] = fn
        return fn
    return add


def get_sampler(name: str) -> Sampler:
    """The sampler registered as ``name``; InputError listing the names otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise InputError(f"unknown sampler {name!r}; accepted: {', '.join(SAMPLERS)}") from None


def sampler_options(name: str) -> tuple[str, ...]:
    """The options a sampler takes beyond the common signature, e.g. ("eta",) for ddim."""
    return tuple(p for p in inspect.signature(get_sampler(name)).parameters if p not in COMMON)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def randn(shape: Sequence[int], generator: Generator = None, dtype: torch.dtype = torch.float32,
          device: torch.device | str = "cpu") -> Tensor:
    """Standard normal noise; with a list of generators, row i is drawn from generator i alone."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator]
        return torch.stack(rows).to(device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)


class Level(NamedTuple):
    """One step of a run, from time t to time s (the next listed time; the clean end after the
    last, where α = 1 and σ = 0). Coefficients are Python floats."""

    i: int
    n: int
    t: float
    s: float | None
    alpha_t: float
    sigma_t: float
    alpha_s: float
    sigma_s: float

    @property
    def last(self) -> bool:
        return self.i + 1 == self.n


class Run:
    """The parts of a sampler run that do not depend on its update rule: times, model calls
    with the corrector, the (x̂_0, ε̂) split with optional clipping, noise and callbacks."""

    def __init__(self, fn: EpsFn, schedule: Schedule, timesteps: Timesteps, generator: Generator,
                 callback: Callback | None, clip_x0: float | None, corrector: Corrector | None) -> None:
        if corrector is not None and not isinstance(corrector, Corrector):
            raise InputError(f"corrector must be a compdiff.Corrector or None, got {corrector!r}")
        try:
            self.times = schedule.run(timesteps)
        except ValueError as err:
            raise InputError(str(err)) from None
        self.fn, self.schedule, self.generator = fn, schedule, generator
        self.callback, self.clip_x0, self.corrector = callback, clip_x0, corrector

    def levels(self) -> Iterator[Level]:
        ts, n = self.times, len(self.times)
        for i, t in enumerate(ts):
            s = ts[i + 1] if i + 1 < n else None
            alpha_t, sigma_t = self.schedule.alpha_sigma(t)
            alpha_s, sigma_s = self.schedule.alpha_sigma(s) if s is not None else (1.0, 0.0)
            yield Level(i, n, t, s, alpha_t, sigma_t, alpha_s, sigma_s)

    def noise(self, like: Tensor) -> Tensor:
        return randn(like.shape, self.generator, like.dtype, like.device)

    def predict(self, x: Tensor, level: Level) -> tuple[Tensor, Tensor, Tensor]:
        """(x, x̂_0, ε̂) at this level: the model output at x (after the corrector moved x, when it
        corrects this level), split by the schedule. With clip_x0 = c, x̂_0 is clamped to [−c, c]
        and ε̂ re-derived from it (diffusers' ``clip_sample`` with ``use_clipped_model_output``)."""
        out = self.fn(x, self.schedule.t_batch(level.t, x.shape[0], x.device))
        if self.corrector is not None and self.corrector.applies(level.i, level.n):
            x, out = self.corrector(self.fn, self.schedule, x, level.t, out, lambda: self.noise(x))
        x0, eps = self.schedule.split(x, out, level.t)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = self.schedule.eps_from_x0(x, x0, level.t)
        return x, x0, eps

    def done(self, level: Level, x: Tensor, x0: Tensor) -> None:
        if self.callback is not None:
            self.callback(StepInfo(level.i, level.n, level.t, x, x0))
