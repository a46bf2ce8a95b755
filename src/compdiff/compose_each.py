"""Composition where every sample of the batch follows its own expression.

Evaluation generates one image per concept set, and every set is different; looping
over sets around the sampler would run B small batches instead of one. ``compose_each``
packs them: sample b's terms occupy the first rows of its column, shorter expressions
are padded with null rows of weight 0, and the rule of ``compdiff.compose`` is applied per
sample, in ONE forward of B·(Kmax+1) rows per step (chunked only by ``max_batch``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from compdiff.compose import Mode, Negation, _perpendicular, effective_weights
from compdiff.denoiser import ConceptEncoder, Denoiser
from compdiff.errors import InputError
from compdiff.expr import Expr, parse


class EachComposedEps:
    """``(x (B, ...), t) -> eps (B, ...)`` with B = the number of expressions.

    cond: (G, B, ...) with G = Kmax + 1 and cond[0] the null rows; weights: (G-1, B) float64.
    """

    def __init__(self, denoiser: Denoiser, cond: Tensor, weights: Tensor, max_batch: int | None,
                 negation: Negation = "plain") -> None:
        self.denoiser, self.cond, self.weights, self.max_batch = denoiser, cond, weights, max_batch
        self.negation = negation
        self.rows_evaluated = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        G, B = self.cond.shape[:2]
        if x.shape[0] != B:
            raise ValueError(f"this composition holds {B} expressions but x has {x.shape[0]} samples")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(B) if t.ndim == 0 else t
        x_in = x.unsqueeze(0).expand(G, *x.shape).reshape(G * B, *x.shape[1:])
        t_in = t.unsqueeze(0).expand(G, B).reshape(G * B)
        c_in = self.cond.to(x.device).reshape(G * B, *self.cond.shape[2:])
        self.rows_evaluated += G * B
        m = self.max_batch or G * B
        out = torch.cat([self.denoiser(x_in[i:i + m], t_in[i:i + m], c_in[i:i + m]) for i in range(0, G * B, m)])
        out = out.reshape(G, B, *x.shape[1:])
        w = self.weights.to(x.device, out.dtype).reshape(G - 1, B, *([1] * (x.ndim - 1)))
        delta = out[1:] - out[0]
        if self.negation == "perp":
            delta = _perpendicular(delta, w)
        return out[0] + (w * delta).sum(0)


def compose_each(denoiser: Denoiser, encoder: ConceptEncoder, exprs: Sequence[Expr | str],
                 guidance_scale: float = 1.0, mode: Mode = "sum", max_batch: int | None = None,
                 negation: Negation = "plain") -> EachComposedEps:
    """Sample b follows ``exprs[b]``, composed exactly as ``compose(denoiser, encoder, exprs[b], ...)``."""
    parsed = [parse(e) if isinstance(e, str) else e for e in exprs]
    if not parsed:
        raise InputError("compose_each needs at least one expression")
    if any(e.has_or() for e in parsed):
        raise InputError("compose_each does not support OR")
    if max_batch is not None and max_batch < 1:
        raise InputError(f"max_batch must be >= 1, got {max_batch}")
    if negation not in ("plain", "perp"):
        raise InputError(f"negation must be 'plain' or 'perp', got {negation!r}")
    terms = [[term for term in e.terms() if term.weight != 0.0] for e in parsed]
    K = max(len(ts) for ts in terms)
    null = encoder.null()  # (1, ...)
    flat = [term.concept for ts in terms for term in ts]
    rows = encoder.encode(flat) if flat else null[:0]  # one encode call for the whole batch
    cond = null.unsqueeze(0).repeat(K + 1, len(parsed), *([1] * (null.ndim - 1)))  # (K+1, B, ...)
    weights = torch.zeros(K, len(parsed), dtype=torch.float64)
    i = 0
    for b, ts in enumerate(terms):
        for k, w in enumerate(effective_weights(ts, float(guidance_scale), mode)):
            cond[k + 1, b] = rows[i]
            weights[k, b] = w
            i += 1
    return EachComposedEps(denoiser, cond, weights, max_batch, negation)
