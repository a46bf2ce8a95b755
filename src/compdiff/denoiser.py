"""The one contract between models and everything else.

A model plugs into compdiff by being (or being wrapped as) a ``Denoiser`` and
shipping a ``ConceptEncoder``. Composition (``compdiff.compose``) turns the pair
and an expression into an ``EpsFn``; samplers only ever see an ``EpsFn``.

Conditions (``compdiff.condition.Cond``) are a tensor or a mapping of named tensors
(SDXL/SD3/Flux: ``{"tokens": (K, L, D), "pooled": (K, P), ...}``); composition batches
them field by field and never looks inside a field.

Time ``t`` is whatever the model's schedule uses: int64 timesteps in [0, T) for discrete
schedules, or floats for continuous-time ones (e.g. rectified flow, t in [0, 1]).
Composition passes t through untouched in dtype: it only expands a scalar to (B,) and
moves it to x's device.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

from torch import Tensor

from compdiff.condition import Cond

#: ``eps_fn(x (B, ...), t (B,) or scalar) -> eps (B, ...)``: a condition-free noise
#: prediction, what samplers consume. t: int64 timesteps or float times (see above).
EpsFn = Callable[[Tensor, Tensor], Tensor]


@runtime_checkable
class Denoiser(Protocol):
    """``denoiser(x, t, cond) -> eps``.

    x: (B, ...) noisy samples; t: (B,) int64 timesteps in [0, T), or float times for a
    continuous-time schedule (the dtype the caller gave, unchanged);
    cond: a ``Cond`` of B rows, one per sample (every field's dim 0 = B), as produced
    by the model's encoder. Returns eps: same shape as x.
    """

    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor: ...


@runtime_checkable
class ConceptEncoder(Protocol):
    """Turns concept strings into condition rows for a ``Denoiser``.

    ``encode(["a", "b"])`` -> a ``Cond`` of K rows (a tensor (K, ...), or a mapping whose
    every field has dim 0 = K); ``null()`` -> a ``Cond`` of 1 row, the unconditional one.
    Both must be of the same kind, with the same fields, trailing shapes and dtypes, so that
    they can be concatenated into one batch.
    """

    def encode(self, concepts: Sequence[str]) -> Cond: ...

    def null(self) -> Cond: ...
