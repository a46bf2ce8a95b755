"""Composition: bind an expression to a Denoiser + ConceptEncoder, get an ``(x, t) -> eps``.

The rule (Liu et al., ECCV 2022, eq. 11 with the NOT of sec. 4.2), for terms (c_i, w_i)
and guidance scale s:

    eps*(x, t) = eps(x, t | ∅) + Σ_i k · w_i · s · (eps(x, t | c_i) − eps(x, t | ∅))

with k = 1 for ``mode="sum"`` (the paper's equation) and k = 1 / (number of terms with
positive weight) for ``mode="mean"`` (the official code's older behaviour, which keeps
the total positive guidance at s however many concepts are ANDed). A negative weight is
NOT. Terms whose weight is exactly 0 are not evaluated (their contribution is 0).

Everything a step needs goes through the model in ONE batched forward of B·(K+1) rows
(K unique concepts after merging duplicates, plus the null condition), split into chunks
of at most ``max_batch`` rows only when asked. Conditions are encoded once, here, not
per step; a condition may be a tensor or named tensors (``compdiff.condition``), batched
field by field. The time t reaches the denoiser in the dtype it was given (int64 timesteps
or float times of a continuous-time schedule), only expanded to B and moved to x's device.
The forward and the combination below are one kernel, :func:`guided_eps`, which
``compdiff.compose_each`` (one expression per sample) shares.

``rescale`` is guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", eq. 15-16), per sample:
    eps_r = eps* · std(eps_ref) / std(eps*),  out = rescale · eps_r + (1 − rescale) · eps*
where eps_ref is the unguided conditional prediction: the mean of the positive concepts'
predictions (for one concept that is eps(c), exactly what diffusers' rescale_noise_cfg
uses; with no positive term, eps(∅)). std is over all non-batch dimensions.

``negation="perp"`` is perpendicular NOT (Perp-Neg, Armandpour et al. 2023), per sample:
with d_i = eps(c_i) − eps(∅) and P = Σ_{w_i>0} w_i d_i (the summed, weighted positive
delta of THIS sample), each negative term's delta is replaced by its component
orthogonal to P,  d_j ← d_j − (<d_j, P> / <P, P>) P,  dot products over all non-batch
dimensions of one sample (never over the batch). If P = 0 (no positive term) the
negative deltas are used as they are. The default ``"plain"`` is the paper's rule.

Regions (``"a cat" @ left``, see ``compdiff.regions``): a term with a region has its delta
multiplied by its mask M_i on the samples' grid, eps* = eps(∅) + Σ_i k·w_i·s·M_i ⊙ (eps(c_i) − eps(∅));
M_i = 1 without a region, so an expression without regions is computed exactly as before. The
same concept under several regions is still one row of the forward (its weight becomes the map
Σ k·w·s·M over its terms). Perpendicular NOT then works per pixel: where a concept's weight map
is negative its delta is replaced by the projection above (dot products still over the whole
sample), and P sums the positive parts of the maps. Rescale's eps_ref is the mask-weighted mean
of the positive terms' predictions at each pixel (eps(∅) where no positive term's mask reaches).
Masks are built once per grid size, shared across the batch unless a caller mask is per sample.

OR (see ``compdiff.expr``, "OR and clauses"): the expression's disjunctive normal form
is a list of AND clauses with mixture probabilities pi. Each sample follows ONE clause,
drawn once per sample before sampling (``draw_clauses``, from the sample's own generator)
and bound with ``with_clauses``; the composed eps of sample b is the rule above applied
to the terms of its clause. All clauses' concepts go through the model in one forward
(the union of concepts; per sample, a row of a (C, K) weight matrix); a concept that no
sample of the current batch uses is skipped. Sampling each sample's clause and then its
AND exactly samples the mixture of the clauses' composed models, with the clause
weights pi of ``Expr.clauses`` (which ignore the clauses' normalising constants).
"""
from __future__ import annotations

import copy
from typing import Literal, Sequence

import torch
from torch import Tensor

from compdiff.condition import (Cond, cond_cat, cond_index_select, cond_repeat_interleave, cond_rows, cond_slice,
                                cond_to)
from compdiff.denoiser import ConceptEncoder, Denoiser
from compdiff.errors import InputError
from compdiff.expr import MAX_CLAUSES, Clause, Expr, Term, parse
from compdiff.expr.region import Region
from compdiff.regions import (Masks, RegionMode, check_masks, check_region_options, normalize_overlaps,
                              region_masks, spatial_shape)

Mode = Literal["sum", "mean"]
Negation = Literal["plain", "perp"]
ClauseGenerator = torch.Generator | Sequence[torch.Generator] | None


class ComposedEps:
    """``(x (B, ...), t (B,) or scalar) -> eps (B, ...)``, built by :func:`compose`.

    Attributes: concepts (the K unique evaluated concepts, cond rows 1..K), cond (a ``Cond`` of
    K+1 rows, row 0 the null condition), clauses (the expression's DNF, ``Expr.clauses``),
    clause_probs (C,) float64, slots: the (concept index, region) of each of the S unique
    weighted (concept, region) pairs (S = K, slot k = concept k, when no term has a region),
    weight_matrix (C, S) float64 = k·w·s per clause and slot (0 where a clause lacks it),
    ref_matrix (C, S) bool (the clause's positive terms, averaged into eps_ref for rescale),
    negation, assignment ((B,) clause of each sample, or None), rows_evaluated (running count
    of rows sent through the denoiser), and terms: the evaluated terms of an expression without
    OR ([] with OR). With regions: masks (the caller's, by name), feather, region_mode.
    """

    def __init__(self, denoiser: Denoiser, cond: Cond, concepts: list[str], clauses: list[Clause],
                 weight_matrix: Tensor, ref_matrix: Tensor, rescale: float, max_batch: int | None,
                 negation: Negation = "plain", slots: list[tuple[int, Region | None]] | None = None,
                 masks: Masks | None = None, feather: float = 0.0, region_mode: RegionMode = "sum") -> None:
        self.denoiser = denoiser
        self.cond = cond
        self.concepts = concepts
        self.clauses = clauses
        self.clause_probs = torch.tensor([c.weight for c in clauses], dtype=torch.float64)
        self.weight_matrix = weight_matrix
        self.ref_matrix = ref_matrix
        self.rescale = rescale
        self.max_batch = max_batch
        self.negation = negation
        self.assignment: Tensor | None = None
        self.terms = [t for t in clauses[0].terms if t.weight != 0.0] if len(clauses) == 1 else []
        self.rows_evaluated = 0
        self._rows_cache: dict[tuple, Cond] = {}
        self.slots = slots if slots is not None else [(k, None) for k in range(len(concepts))]
        self.masks, self.feather, self.region_mode = masks, feather, region_mode
        self._maps_cache: dict[tuple, Tensor] = {}

    @property
    def has_regions(self) -> bool:
        return any(region is not None for _, region in self.slots)

    # ---- OR: one clause per sample ------------------------------------------------
    def draw_clauses(self, batch_size: int, generator: ClauseGenerator = None) -> Tensor:
        """(batch_size,) int64: the clause each sample follows, drawn with probabilities
        clause_probs by inverse CDF of one uniform per sample. With a list of generators,
        sample i's uniform comes from generator i alone (so its clause depends only on its
        seed). With one clause, returns zeros and draws nothing."""
        C = len(self.clauses)
        if C == 1:
            return torch.zeros(batch_size, dtype=torch.long)
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch_size:
                raise ValueError(f"got {len(generator)} generators for a batch of {batch_size}")
            u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generator])
        else:
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        cdf = torch.cumsum(self.clause_probs, 0)
        return torch.searchsorted(cdf, u, right=True).clamp(max=C - 1)

    def with_clauses(self, assignment: Tensor | Sequence[int]) -> ComposedEps:
        """A copy bound to one clause per sample (``assignment`` (B,) clause indices); it then
        only accepts batches of B samples. Its rows_evaluated counts separately."""
        a = torch.as_tensor(assignment, dtype=torch.long).reshape(-1).cpu()
        if a.numel() and (a.min() < 0 or a.max() >= len(self.clauses)):
            raise ValueError(f"clause indices must lie in [0, {len(self.clauses)}), got {a.tolist()}")
        out = copy.copy(self)
        out.assignment = a
        out.rows_evaluated = 0
        return out

    def _sample_weights(self, B: int) -> tuple[Tensor, Tensor]:
        """(K, B) effective weights and (K, B) rescale-reference mask of each sample."""
        if self.assignment is None:
            if len(self.clauses) > 1:
                raise InputError(
                    f"this composition is a mixture of {len(self.clauses)} clauses (OR): choose each "
                    "sample's clause first, eps_fn = eps_fn.with_clauses(eps_fn.draw_clauses(B, generator))"
                )
            return self.weight_matrix[0].unsqueeze(1).expand(-1, B), self.ref_matrix[0].unsqueeze(1).expand(-1, B)
        if self.assignment.numel() != B:
            raise ValueError(f"bound to {self.assignment.numel()} samples' clauses but x has {B} samples")
        return self.weight_matrix[self.assignment].T, self.ref_matrix[self.assignment].T

    # ---- the forward -----------------------------------------------------------------
    def _cond_rows(self, B: int, device: torch.device, active: tuple[int, ...]) -> Cond:
        """cond rows [0, *active] repeated to G·B rows, condition-major: rows [j·B, (j+1)·B) hold condition j."""
        key = (B, device, active)
        if key not in self._rows_cache:  # one entry: a sampler calls with the same B and concepts every step
            rows = cond_to(cond_index_select(self.cond, torch.tensor((0, *active), dtype=torch.long)), device)
            self._rows_cache = {key: cond_repeat_interleave(rows, B)}
        return self._rows_cache[key]

    def _region_weights(self, x: Tensor, W: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
        """Per-slot (S, B) weights and positive flags -> per-concept maps (K, B, 1, h, w): the weight
        map Σ_slots k·w·s·M and the rescale reference weight Σ_positive slots M."""
        B, (h, w) = x.shape[0], spatial_shape(x)
        key = (h, w, B, x.device)
        if key not in self._maps_cache:  # one entry: a sampler calls with the same shape every step
            maps = region_masks([r for _, r in self.slots], h, w, self.feather, self.masks, batch=B)
            self._maps_cache = {key: maps.unsqueeze(2).to(x.device)}  # type: ignore[union-attr]
        maps = self._maps_cache[key].expand(-1, B, -1, -1, -1)  # (S, B, 1, h, w)
        Wd = W.to(x.device, torch.float32)
        if self.region_mode == "normalize":
            has_region = torch.tensor([r is not None for _, r in self.slots], device=x.device)
            maps = normalize_overlaps(maps, Wd, has_region)
        owner = torch.tensor([k for k, _ in self.slots], device=x.device)
        K = len(self.concepts)
        wmap = torch.zeros(K, B, 1, h, w, device=x.device).index_add_(0, owner, Wd[..., None, None, None] * maps)
        rmap = torch.zeros(K, B, 1, h, w, device=x.device).index_add_(
            0, owner, ref.to(x.device, torch.float32)[..., None, None, None] * maps)
        return wmap, rmap

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        B = x.shape[0]
        W, ref = self._sample_weights(B)
        if self.has_regions:
            owner = torch.tensor([k for k, _ in self.slots], dtype=torch.long)
            used = torch.zeros(len(self.concepts), dtype=torch.bool)
            used[owner[(W != 0).any(1)]] = True
            W, ref = self._region_weights(x, W, ref)
        else:
            used = (W != 0).any(1)
        keep = used  # concepts no sample of this batch uses are not evaluated
        active = tuple(int(k) + 1 for k in torch.nonzero(keep).flatten())  # cond rows in use
        self.rows_evaluated += B * (1 + len(active))
        keep = keep.to(W.device)
        return guided_eps(self.denoiser, x, t, self._cond_rows(B, x.device, active), W[keep], ref[keep],
                          self.negation, self.rescale, self.max_batch)


def guided_eps(denoiser: Denoiser, x: Tensor, t: Tensor | float, cond: Cond, weights: Tensor, ref_mask: Tensor,
               negation: Negation = "plain", rescale: float = 0.0, max_batch: int | None = None) -> Tensor:
    """The composition kernel shared by :func:`compose` and ``compose_each``: the composed eps (B, ...)
    of G = 1 + K' conditions per sample, from ONE batched forward of G·B rows.

    x: (B, ...); t: (B,) or scalar, int64 timesteps or float times, passed to the denoiser in
    its own dtype (only expanded to B and moved to x's device); cond: a ``Cond`` of G·B rows,
    condition-major (rows [g·B, (g+1)·B) hold condition g of every sample; g = 0 the null);
    weights: (K', B) k·w·s of condition g = 1..K' for sample b (0: unused by that sample), or weight
    maps (K', B, 1, h, w) of regional composition (broadcast against x's (C, h, w));
    ref_mask: (K', B) bool, sample b's positive terms (their mean prediction is eps_ref for rescale),
    or (K', B, 1, h, w) float weights of that mean per pixel.
    The forward is split into chunks of at most ``max_batch`` rows, nothing else; the combination
    (perpendicular NOT, weighted sum, guidance rescale) is the module docstring's, per sample.
    """
    B, G = x.shape[0], 1 + weights.shape[0]
    if weights.shape[1] != B or ref_mask.shape[:2] != weights.shape[:2] or cond_rows(cond) != G * B:
        raise ValueError(f"for x of {B} samples, weights and ref_mask must be ({G - 1}, {B}, ...) and cond hold "
                         f"{G * B} rows; got {tuple(weights.shape)}, {tuple(ref_mask.shape)}, {cond_rows(cond)}")
    t = torch.as_tensor(t, device=x.device)
    t = t.expand(B) if t.ndim == 0 else t
    x_in = x.unsqueeze(0).expand(G, *x.shape).reshape(G * B, *x.shape[1:])
    t_in = t.unsqueeze(0).expand(G, B).reshape(G * B)
    out = _forward(denoiser, x_in, t_in, cond, max_batch).reshape(G, B, *x.shape[1:])
    eps_null, eps_c = out[0], out[1:]
    if G == 1:
        return eps_null
    w = weights.to(x.device, out.dtype)
    if w.ndim == 2:
        w = w.reshape(G - 1, B, *([1] * (x.ndim - 1)))
    delta = eps_c - eps_null
    if negation == "perp":
        delta = _perpendicular(delta, w)
    eps = eps_null + (w * delta).sum(0)
    if rescale:
        eps = _rescaled(eps, eps_null, eps_c, ref_mask.to(x.device), rescale)
    return eps


def _forward(denoiser: Denoiser, x: Tensor, t: Tensor, cond: Cond, max_batch: int | None) -> Tensor:
    """denoiser(x, t, cond) over N rows, in chunks of at most max_batch rows."""
    n = x.shape[0]
    if max_batch is None or n <= max_batch:
        return denoiser(x, t, cond)
    m = max_batch
    return torch.cat([denoiser(x[i:i + m], t[i:i + m], cond_slice(cond, i, i + m)) for i in range(0, n, m)])


def _rescaled(eps: Tensor, eps_null: Tensor, eps_c: Tensor, ref_mask: Tensor, rescale: float) -> Tensor:
    """Guidance rescale of eps (B, ...); ref_mask (K', B): each sample's positive terms, whose mean
    prediction (eps_c (K', B, ...)) is eps_ref, eps_null where a sample has none. With regions,
    ref_mask is (K', B, 1, h, w) mask weights and the mean is taken per pixel."""
    m = ref_mask.to(eps_c.dtype)
    if m.ndim == 2:
        m = m.reshape(*ref_mask.shape, *([1] * (eps.ndim - 1)))
    n = m.sum(0)
    ref = torch.where(n > 0, (m * eps_c).sum(0) / torch.where(n > 0, n, torch.ones_like(n)), eps_null)
    dims = list(range(1, eps.ndim))
    eps_r = eps * (ref.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True))
    return rescale * eps_r + (1 - rescale) * eps


def _perpendicular(delta: Tensor, w: Tensor) -> Tensor:
    """delta (K, B, ...) and weights w (K, B, 1, ...) or weight maps (K, B, 1, h, w): each negative
    term's delta minus its projection on P = Σ max(w, 0)·delta, per sample b (dot products over
    dims 2.. only); with maps, replaced only at the pixels where the weight is negative."""
    neg = w < 0
    if not bool(neg.any()):
        return delta
    P = (w.clamp(min=0) * delta).sum(0, keepdim=True)  # (1, B, ...)
    dims = list(range(2, delta.ndim))
    pp = (P * P).sum(dims, keepdim=True)  # (1, B, 1, ...)
    coef = (delta * P).sum(dims, keepdim=True) / torch.where(pp > 0, pp, torch.ones_like(pp))
    return torch.where(neg, delta - coef * P, delta)


def effective_weights(terms: list[Term], guidance_scale: float, mode: Mode) -> list[float]:
    """k·w_i·s for each term: k = 1 ("sum"), or 1/P with P the number of positive terms
    ("mean"; no division when P = 0)."""
    if mode not in ("sum", "mean"):
        raise InputError(f"mode must be 'sum' or 'mean', got {mode!r}")
    positives = sum(1 for term in terms if term.weight > 0)
    k = 1.0 / positives if mode == "mean" and positives else 1.0
    return [term.weight * guidance_scale * k for term in terms]


def check_options(rescale: float, max_batch: int | None, negation: str) -> None:
    """Raise InputError for rescale outside [0, 1], max_batch < 1 or a negation other than plain/perp."""
    if not 0.0 <= rescale <= 1.0:
        raise InputError(f"rescale must lie in [0, 1], got {rescale}")
    if max_batch is not None and max_batch < 1:
        raise InputError(f"max_batch must be >= 1, got {max_batch}")
    if negation not in ("plain", "perp"):
        raise InputError(f"negation must be 'plain' or 'perp', got {negation!r}")


def encode_conditions(encoder: ConceptEncoder, concepts: Sequence[str]) -> Cond:
    """The null condition then one row per concept: a ``Cond`` of 1 + K rows, from ONE encode
    call (none when K = 0). Raises ValueError when the encoder returns the wrong number of rows,
    fields that disagree in rows, or null and concept conditions with different fields."""
    null = encoder.null()
    if cond_rows(null) != 1:
        raise ValueError(f"encoder.null() must return 1 row, got {cond_rows(null)}")
    if not concepts:
        return null
    rows = encoder.encode(list(concepts))
    if cond_rows(rows) != len(concepts):
        raise ValueError(f"encoder.encode() returned {cond_rows(rows)} rows for {len(concepts)} concepts")
    return cond_cat([null, rows])


def compose(denoiser: Denoiser, encoder: ConceptEncoder, expr: Expr | str, guidance_scale: float = 1.0,
            mode: Mode = "sum", rescale: float = 0.0, max_batch: int | None = None,
            negation: Negation = "plain", max_clauses: int = MAX_CLAUSES, masks: Masks | None = None,
            feather: float = 0.0, region_mode: RegionMode = "sum") -> ComposedEps:
    """Compose ``expr`` over ``denoiser`` with conditions from ``encoder``; see the module docstring.

    expr: an Expr or its text (parsed with :func:`compdiff.parse`). With OR, bind each sample's
    clause before sampling: ``eps_fn.with_clauses(eps_fn.draw_clauses(B, generator))``.
    Regions (``@ left``, ``@ (x0, y0, x1, y1)``, ``@ mask:NAME``; see ``compdiff.regions``):
    masks maps each ``mask:NAME`` to an (H, W) or per-sample (B, H, W) tensor in [0, 1];
    feather is the edge width as a fraction of the image; region_mode "sum" or "normalize".
    Raises InputError for an unknown mode or negation, rescale outside [0, 1], max_batch < 1,
    an expression ``Expr.clauses`` refuses (NOT of an OR, bad mixture weights, too many clauses),
    a missing or malformed mask, a feather outside [0, 1] or an unknown region mode.
    """
    if isinstance(expr, str):
        expr = parse(expr)
    check_options(rescale, max_batch, negation)
    check_region_options(feather, region_mode)
    clauses = expr.clauses(max_clauses)
    concepts: dict[str, int] = {}
    slots: dict[tuple[str, Region | None], int] = {}
    rows: list[list[tuple[int, float, bool]]] = []
    for clause in clauses:
        terms = [term for term in clause.terms if term.weight != 0.0]
        eff = effective_weights(terms, float(guidance_scale), mode)
        for term in terms:
            concepts.setdefault(term.concept, len(concepts))
            slots.setdefault((term.concept, term.region), len(slots))
        rows.append([(slots[(term.concept, term.region)], w, term.weight > 0) for term, w in zip(terms, eff)])
    W = torch.zeros(len(clauses), len(slots), dtype=torch.float64)
    ref = torch.zeros(len(clauses), len(slots), dtype=torch.bool)
    for c, row in enumerate(rows):
        for slot, w, positive in row:
            W[c, slot] = w
            ref[c, slot] = positive
    names = list(concepts)
    slot_list = [(concepts[concept], region) for concept, region in slots]
    check_masks(masks, [region for _, region in slot_list])  # a missing mask fails here, not mid-sampling
    return ComposedEps(denoiser, encode_conditions(encoder, names), names, clauses, W, ref, rescale, max_batch,
                       negation, slot_list, masks, float(feather), region_mode)
