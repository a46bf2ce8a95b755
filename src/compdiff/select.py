"""Selection by lift: draw M candidates per requested image, keep the one that best satisfies the expression.

Seeds. Candidate j (0 ≤ j < M) of image i, for a run with seed s, uses

    candidate_seed(s, i, j) = s + i                                   if j = 0
                            = splitmix64((s + i) · 2^32 + j) mod 2^63  if j ≥ 1

so candidate 0 is the very image plain sampling gives for seed s + i (M = 1 is plain sampling), and
the others are spread over the 63-bit seed space by SplitMix64's finaliser (Steele et al. 2014), a
function of (s + i, j) alone: image i's candidates do not depend on n, M's other values or the batch.
A candidate of seed c is scored by ``select="lift"`` with the lift noises of seed
``lift_seed(c) = splitmix64(c XOR 0x6C696674) mod 2^63`` (not c itself: the lift's first noise would
then be the candidate's own x_T).

The keep rule (Yu & Gao, ICML 2025). For one AND clause, image x satisfies it when every positive term's
lift is above 0 and every NOT term's below 0; its margin is the smallest of sign(w_k)·lift_k over the
clause's terms (> 0 exactly when it satisfies). With OR, an image satisfies the expression when it
satisfies one clause, and its margin is the largest clause margin. Of each image's M candidates the
one with the largest margin is kept (ties: the lowest j), satisfying or not, so that exactly n images
come back; ``Selection.satisfied`` says which of them satisfy the rule.

The scores come from :func:`compdiff.lift` (fresh noisings, ``select="lift"``) or from
:class:`compdiff.lift.CachedLift` (the sampling trajectory, ``select="cached-lift"``, no extra model
evaluation); this module only ranks them.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from compdiff.errors import InputError
from compdiff.expr import Expr, parse

MASK63 = (1 << 63) - 1
MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def candidate_seed(seed: int, i: int, j: int) -> int:
    """The seed of candidate j of image i (module docstring); a non-negative integer below 2^63."""
    if i < 0 or j < 0:
        raise InputError(f"image and candidate indices must be >= 0, got i = {i}, j = {j}")
    base = seed + i
    if j == 0:
        return base
    return _splitmix64(((base << 32) + j) & MASK64) & MASK63


LIFT_SALT = 0x6C696674  # "lift"


def lift_seed(seed: int) -> int:
    """The seed of the lift noises that score the candidate of seed ``seed`` (module docstring)."""
    return _splitmix64((int(seed) ^ LIFT_SALT) & MASK64) & MASK63


def candidate_seeds(seed: int, n: int, m: int) -> list[list[int]]:
    """[[candidate_seed(seed, i, j) for j < m] for i < n]."""
    if n < 1 or m < 1:
        raise InputError(f"need n >= 1 images and m >= 1 candidates, got n = {n}, m = {m}")
    return [[candidate_seed(seed, i, j) for j in range(m)] for i in range(n)]


def signs(expr: Expr | str, concepts: Sequence[str]) -> Tensor:
    """(C, K) float64: per clause of ``expr`` the sign of each concept's weight (+1 positive, −1 NOT, 0 absent
    from the clause), concepts in the order of ``concepts`` (a Lift's names)."""
    expr = parse(expr) if isinstance(expr, str) else expr
    at = {c: k for k, c in enumerate(concepts)}
    clauses = expr.clauses()
    out = torch.zeros(len(clauses), len(concepts), dtype=torch.float64)
    for ci, clause in enumerate(clauses):
        weight: dict[str, float] = {}
        for term in clause.terms:  # the same concept under several regions: its weights add
            weight[term.concept] = weight.get(term.concept, 0.0) + term.weight
        for concept, w in weight.items():
            if w == 0.0:
                continue
            if concept not in at:
                raise InputError(f"the scores hold no lift for the concept {concept!r}")
            out[ci, at[concept]] = math.copysign(1.0, w)
    return out


def margins(scores: Tensor, sign: Tensor) -> Tensor:
    """(...,) the keep-rule margin of lift scores (..., K) under clause signs (C, K): max over clauses of the
    min over the clause's terms of sign·lift (+inf for a clause without terms). NaN lifts count as failing."""
    s = sign.to(scores.dtype)
    prod = scores.unsqueeze(-2) * s  # (..., C, K)
    prod = torch.where(s != 0, torch.nan_to_num(prod, nan=-math.inf), torch.full_like(prod, math.inf))
    return prod.min(-1).values.max(-1).values


def holds(scores: Tensor, expr: Expr | str, concepts: Sequence[str]) -> Tensor:
    """(...,) bool: whether images with lift scores (..., K) over ``concepts`` satisfy ``expr``."""
    return margins(scores, signs(expr, concepts)) > 0


class Selection(NamedTuple):
    """index (n,): the kept candidate j of each image; seed (n,) its seed; margin (n,) float64; satisfied (n,)
    bool (margin > 0); scores (n, K): the kept candidates' lifts."""

    index: Tensor
    seed: Tensor
    margin: Tensor
    satisfied: Tensor
    scores: Tensor


def select(scores: Tensor, expr: Expr | str, concepts: Sequence[str], seeds: Sequence[Sequence[int]]) -> Selection:
    """Keep one of M candidates per image: scores (n, M, K) lifts of candidate j of image i over ``concepts``;
    seeds (n × M) their seeds (:func:`candidate_seeds`). Largest margin first, ties to the lowest j."""
    if scores.ndim != 3:
        raise InputError(f"scores must be (n, M, K), got shape {tuple(scores.shape)}")
    n, m, _ = scores.shape
    seed_t = torch.as_tensor(seeds, dtype=torch.long)
    if tuple(seed_t.shape) != (n, m):
        raise InputError(f"seeds must be {n} x {m}, got {tuple(seed_t.shape)}")
    marg = margins(scores.double(), signs(expr, concepts))  # (n, M)
    best = torch.stack([_first_max(row) for row in marg])
    rows = torch.arange(n)
    kept = marg[rows, best]
    return Selection(best, seed_t[rows, best], kept, kept > 0, scores[rows, best])


def _first_max(row: Tensor) -> Tensor:
    """Index of the largest value of row (the first one among ties; NaN never wins)."""
    clean = torch.nan_to_num(row, nan=-math.inf)
    return torch.nonzero(clean == clean.max()).flatten()[0]


__all__ = ["candidate_seed", "candidate_seeds", "lift_seed", "signs", "margins", "holds", "Selection", "select"]
