"""The one contract between models and everything else.

A model plugs into compdiff by being (or being wrapped as) a ``Denoiser`` and
shipping a ``ConceptEncoder``. Composition (``compdiff.compose``) turns the pair
and an expression into an ``EpsFn``; samplers only ever see an ``EpsFn``.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

from torch import Tensor

#: ``eps_fn(x (B, ...), t (B,) int64) -> eps (B, ...)``: a condition-free noise
#: prediction, what samplers consume.
EpsFn = Callable[[Tensor, Tensor], Tensor]


@runtime_checkable
class Denoiser(Protocol):
    """``denoiser(x, t, cond) -> eps``.

    x: (B, ...) noisy samples; t: (B,) integer timesteps in [0, T);
    cond: (B, ...) one condition row per sample (as produced by an encoder).
    Returns eps: same shape as x.
    """

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor: ...


@runtime_checkable
class ConceptEncoder(Protocol):
    """Turns concept strings into condition rows for a ``Denoiser``.

    ``encode(["a", "b"])`` -> cond (K, ...); ``null()`` -> cond (1, ...), the
    unconditional row. Both must have the same trailing shape and dtype so that
    they can be concatenated into one batch.
    """

    def encode(self, concepts: Sequence[str]) -> Tensor: ...

    def null(self) -> Tensor: ...
