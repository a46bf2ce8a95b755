"""Conditions: one tensor, or named tensors that travel together.

A model that needs a single embedding per row (the world models, Stable Diffusion 1.x/2.x:
(K, L, D) text embeddings) uses a plain tensor. SDXL, SD3 and Flux need several: per-token
states ``tokens`` (K, L, D), a ``pooled`` vector (K, P), extra ids. Such a condition is a
mapping from field name to tensor, and row k of the condition is row k of EVERY field.

The functions below treat a condition field by field, so composition never has to know
which kind it holds; each returns the same kind it was given (a mapping comes back as a
dict with the same field order). Only torch is imported here.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

import torch
from torch import Tensor

#: A condition of N rows: a tensor (N, ...) or named tensors that all have N rows (dim 0).
Cond: TypeAlias = Tensor | Mapping[str, Tensor]


def _map(c: Cond, fn: Callable[[Tensor], Tensor]) -> Cond:
    return fn(c) if isinstance(c, Tensor) else {name: fn(v) for name, v in c.items()}


def cond_rows(c: Cond) -> int:
    """The number of rows (dim 0) of ``c``. Raises ValueError if ``c`` is a mapping without
    fields or whose fields disagree in rows (naming every field and its rows)."""
    if isinstance(c, Tensor):
        return c.shape[0]
    rows = {name: v.shape[0] for name, v in c.items()}
    if not rows:
        raise ValueError("a condition mapping needs at least one field")
    if len(set(rows.values())) > 1:
        raise ValueError("condition fields disagree in rows (dim 0): "
                         + ", ".join(f"{name} has {n}" for name, n in rows.items()))
    return next(iter(rows.values()))


def cond_cat(conds: Sequence[Cond]) -> Cond:
    """Rows of ``conds`` one after the other: (N_1 + N_2 + ..., ...) per field. All must be
    tensors, or all mappings with the same field names (else ValueError)."""
    if not conds:
        raise ValueError("cond_cat needs at least one condition")
    if all(isinstance(c, Tensor) for c in conds):
        return torch.cat(list(conds))
    if any(isinstance(c, Tensor) for c in conds):
        raise ValueError("cannot concatenate a plain tensor condition with a mapping of fields")
    names = list(conds[0])
    for c in conds[1:]:
        if set(c) != set(names):
            raise ValueError(f"condition fields differ: {sorted(names)} vs {sorted(c)}")
    return {name: torch.cat([c[name] for c in conds]) for name in names}


def cond_index_select(c: Cond, idx: Tensor) -> Cond:
    """Rows ``idx`` (N,) int64 of ``c``, in that order (repeats allowed): (N, ...) per field.
    ``idx`` is moved to each field's device."""
    return _map(c, lambda v: v.index_select(0, idx.to(v.device)))


def cond_repeat_interleave(c: Cond, n: int) -> Cond:
    """Each row of ``c`` repeated ``n`` times in place: (N·n, ...) per field, rows r·n..r·n+n-1 = row r."""
    return _map(c, lambda v: v.repeat_interleave(n, dim=0))


def cond_to(c: Cond, device: torch.device | str) -> Cond:
    """``c`` on ``device`` (dtypes unchanged; a field already there is returned as is)."""
    return _map(c, lambda v: v.to(device))


def cond_slice(c: Cond, start: int, stop: int) -> Cond:
    """Rows [start, stop) of ``c`` (views, no copy)."""
    return _map(c, lambda v: v[start:stop])
