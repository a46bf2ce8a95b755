"""Composition where every sample of the batch follows its own expression.

Evaluation generates one image per concept set, and every set is different; looping
over sets around the sampler would run B small batches instead of one. ``compose_each``
packs them: sample b's terms occupy the first condition groups of its column, shorter
expressions are padded with null rows of weight 0, and the rule of ``compdiff.compose``
(with its rescale and negation options) is applied per sample by the same kernel,
``compdiff.compose.guided_eps``, in ONE forward of B·(Kmax+1) rows per step (chunked only
by ``max_batch``). Regions (``@ left``...) work as in ``compose``: each sample's terms carry
their own masks, built once per grid size.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from compdiff.compose import Mode, Negation, check_options, effective_weights, encode_conditions, guided_eps
from compdiff.condition import Cond, cond_index_select, cond_rows, cond_to
from compdiff.denoiser import ConceptEncoder, Denoiser
from compdiff.errors import InputError
from compdiff.expr import Expr, parse
from compdiff.expr.region import Region
from compdiff.regions import (Masks, RegionMode, check_masks, check_region_options, normalize_overlaps,
                              region_masks, spatial_shape)


class EachComposedEps:
    """``(x (B, ...), t (B,) or scalar) -> eps (B, ...)`` with B = the number of expressions.

    cond: a ``Cond`` of G·B rows, G = Kmax + 1, condition-major (rows [g·B, (g+1)·B) hold
    condition g of every sample; g = 0 and the padding are the null condition);
    weights: (G-1, B) float64 k·w·s (0 for padding); ref_mask: (G-1, B) bool, positive terms;
    rows_evaluated: running count of rows sent through the denoiser; regions: (G-1, B) the region
    of each term (None: none), or None when no term has one; masks, feather, region_mode as in compose.
    """

    def __init__(self, denoiser: Denoiser, cond: Cond, weights: Tensor, ref_mask: Tensor, rescale: float,
                 max_batch: int | None, negation: Negation = "plain",
                 regions: list[list[Region | None]] | None = None, masks: Masks | None = None,
                 feather: float = 0.0, region_mode: RegionMode = "sum") -> None:
        self.denoiser, self.cond, self.weights, self.ref_mask = denoiser, cond, weights, ref_mask
        self.rescale, self.max_batch, self.negation = rescale, max_batch, negation
        self.rows_evaluated = 0
        self.regions, self.masks, self.feather, self.region_mode = regions, masks, feather, region_mode
        self._maps_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _region_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The (G-1, B, 1, h, w) weight maps and rescale reference maps of every term."""
        assert self.regions is not None
        (h, w), B = spatial_shape(x), x.shape[0]
        key = (h, w, x.device)
        if key not in self._maps_cache:
            unique = list(dict.fromkeys(r for row in self.regions for r in row if r is not None))
            drawn = region_masks(unique, h, w, self.feather, self.masks, batch=B)  # (U, 1 or B, h, w)
            maps = torch.ones(len(self.regions), B, 1, h, w)
            for k, row in enumerate(self.regions):
                for b, r in enumerate(row):
                    if r is not None:
                        u = drawn[unique.index(r)]  # type: ignore[index]
                        maps[k, b, 0] = u[b if u.shape[0] == B else 0]
            weights = self.weights.to(torch.float32)
            if self.region_mode == "normalize":
                has_region = torch.tensor([[r is not None for r in row] for row in self.regions])
                maps = normalize_overlaps(maps, weights, has_region)
            wmap = weights[..., None, None, None] * maps
            rmap = self.ref_mask.to(torch.float32)[..., None, None, None] * maps
            self._maps_cache = {key: (wmap.to(x.device), rmap.to(x.device))}
        return self._maps_cache[key]

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        B = self.weights.shape[1]
        if x.shape[0] != B:
            raise ValueError(f"this composition holds {B} expressions but x has {x.shape[0]} samples")
        self.rows_evaluated += cond_rows(self.cond)
        weights, ref_mask = self._region_weights(x) if self.regions is not None else (self.weights, self.ref_mask)
        return guided_eps(self.denoiser, x, t, cond_to(self.cond, x.device), weights, ref_mask,
                          self.negation, self.rescale, self.max_batch)


def compose_each(denoiser: Denoiser, encoder: ConceptEncoder, exprs: Sequence[Expr | str],
                 guidance_scale: float = 1.0, mode: Mode = "sum", rescale: float = 0.0,
                 max_batch: int | None = None, negation: Negation = "plain", masks: Masks | None = None,
                 feather: float = 0.0, region_mode: RegionMode = "sum") -> EachComposedEps:
    """Sample b follows ``exprs[b]``, composed exactly as ``compose(denoiser, encoder, exprs[b], ...)``
    with the same options (a per-sample mask (B, H, W) gives sample b its row b). Raises InputError
    for no expressions, an OR, a bad option or a missing mask."""
    parsed = [parse(e) if isinstance(e, str) else e for e in exprs]
    if not parsed:
        raise InputError("compose_each needs at least one expression")
    if any(e.has_or() for e in parsed):
        raise InputError("compose_each does not support OR")
    check_options(rescale, max_batch, negation)
    check_region_options(feather, region_mode)
    terms = [[term for term in e.terms() if term.weight != 0.0] for e in parsed]
    K, B = max(len(ts) for ts in terms), len(parsed)
    # one encode call for the whole batch: row 0 the null, then every sample's terms in order
    table = encode_conditions(encoder, [term.concept for ts in terms for term in ts])
    idx = torch.zeros(K + 1, B, dtype=torch.long)  # table row of (group g, sample b); 0 = null/padding
    weights = torch.zeros(K, B, dtype=torch.float64)
    ref_mask = torch.zeros(K, B, dtype=torch.bool)
    row = 1
    for b, ts in enumerate(terms):
        for k, (term, w) in enumerate(zip(ts, effective_weights(ts, float(guidance_scale), mode))):
            idx[k + 1, b], weights[k, b], ref_mask[k, b] = row, w, term.weight > 0
            row += 1
    cond = cond_index_select(table, idx.reshape(-1))  # condition-major: idx is (G, B)
    regions = None
    if any(term.region is not None for ts in terms for term in ts):
        regions = [[ts[k].region if k < len(ts) else None for ts in terms] for k in range(K)]
        check_masks(masks, [r for row in regions for r in row])
    return EachComposedEps(denoiser, cond, weights, ref_mask, rescale, max_batch, negation, regions, masks,
                           float(feather), region_mode)
