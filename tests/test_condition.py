"""Structured conditions (named tensors, as SDXL/SD3/Flux need) through compose and compose_each.

The toy denoiser reads every field of its condition, so a batching mistake in any field
(wrong rows, wrong order, a field left out of a chunk) changes its output. References are
per-concept loops written out by hand, never through compose().
"""
import pytest
import torch

from compdiff.compose import compose
from compdiff.compose_each import compose_each
from compdiff.condition import (cond_cat, cond_index_select, cond_repeat_interleave, cond_rows, cond_slice,
                                cond_to)

L, D, P, IDS = 3, 4, 5, 7


class DictEncoder:
    """Concept -> {"tokens": (L, D), "pooled": (P,), "ids": () int64}, fixed random; null = zeros, id 0."""

    def __init__(self):
        self.calls = 0

    def encode(self, concepts):
        self.calls += 1
        rows = []
        for c in concepts:
            g = torch.Generator().manual_seed(sum(map(ord, c)) * 7919 + len(c))
            rows.append((torch.randn(L, D, generator=g, dtype=torch.float64),
                         torch.randn(P, generator=g, dtype=torch.float64),
                         torch.randint(1, IDS, (), generator=g)))
        return {"tokens": torch.stack([r[0] for r in rows]), "pooled": torch.stack([r[1] for r in rows]),
                "ids": torch.stack([r[2] for r in rows])}

    def null(self):
        return {"tokens": torch.zeros(1, L, D, dtype=torch.float64), "pooled": torch.zeros(1, P, dtype=torch.float64),
                "ids": torch.zeros(1, dtype=torch.long)}


class DictDenoiser:
    """eps = tanh(x·scale[ids] + proj(position-weighted tokens) + proj(pooled) + t/1000), x (B, 2, 4).
    Counts calls and rows."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.scale = 1 + torch.randn(IDS, generator=g, dtype=torch.float64)
        self.pos = torch.randn(L, generator=g, dtype=torch.float64)
        self.wt = torch.randn(D, 8, generator=g, dtype=torch.float64)
        self.wp = torch.randn(P, 8, generator=g, dtype=torch.float64)
        self.calls, self.rows = 0, 0

    def __call__(self, x, t, cond):
        assert {k: v.shape[0] for k, v in cond.items()} == dict.fromkeys(cond, x.shape[0])
        self.calls += 1
        self.rows += x.shape[0]
        tok = (cond["tokens"] * self.pos[:, None]).sum(1) @ self.wt
        h = x * self.scale[cond["ids"]][:, None, None] + (tok + cond["pooled"] @ self.wp).view(-1, 2, 4)
        return torch.tanh(h + t.to(x.dtype)[:, None, None] / 1000)


def _eps(den, enc, x, t, concept=None):
    """eps(x, t | c) by a direct call with every field's row expanded to the batch; None = null."""
    row = enc.null() if concept is None else enc.encode([concept])
    return den(x, t, {k: v.expand(x.shape[0], *v.shape[1:]) for k, v in row.items()})


def _by_hand(den, enc, x, t, s, terms):
    """eps(∅) + Σ w·s·(eps(c) − eps(∅)) over terms {concept: merged weight}, one call per concept."""
    e_u = _eps(den, enc, x, t)
    return e_u + sum(w * s * (_eps(den, enc, x, t, c) - e_u) for c, w in terms.items())


def _data(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 2, 4, generator=g, dtype=torch.float64), torch.randint(0, 1000, (B,), generator=g)


@pytest.mark.parametrize("expr, terms", [('"a"', {"a": 1.0}),
                                         ('"a" AND "b":1.5 AND NOT "c":0.8 AND "a":0.5',
                                          {"a": 1.5, "b": 1.5, "c": -0.8})])
@pytest.mark.parametrize("max_batch", [None, 1, 5])
def test_compose_with_named_fields_equals_per_concept_loop(expr, terms, max_batch):
    den, enc = DictDenoiser(), DictEncoder()
    x, t = _data(3)
    eps_fn = compose(den, enc, expr, guidance_scale=2.5, max_batch=max_batch)
    den.calls = 0
    out = eps_fn(x, t)
    rows = 3 * (len(terms) + 1)
    assert den.calls == (1 if max_batch is None else -(-rows // max_batch))  # one forward, chunked only if asked
    torch.testing.assert_close(out, _by_hand(den, enc, x, t, 2.5, terms), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_batch", [None, 3])
def test_compose_each_with_named_fields_equals_per_sample_loop(max_batch):
    den, enc = DictDenoiser(), DictEncoder()
    exprs = {'"a"': {"a": 1.0}, '"b" AND NOT "c":0.5 AND "a":2': {"b": 1.0, "c": -0.5, "a": 2.0},
             '"c" AND "c":0.5': {"c": 1.5}, 'NOT "b"': {"b": -1.0}}
    x, t = _data(len(exprs), seed=1)
    eps_fn = compose_each(den, enc, list(exprs), guidance_scale=2.0, max_batch=max_batch)
    den.calls = 0
    out = eps_fn(x, t)
    assert den.calls == (1 if max_batch is None else -(-4 * 4 // max_batch)) and enc.calls == 1
    for b, terms in enumerate(exprs.values()):
        torch.testing.assert_close(out[b], _by_hand(den, enc, x, t, 2.0, terms)[b], rtol=1e-12, atol=1e-12)


class RowsDisagree(DictEncoder):
    def encode(self, concepts):
        cond = super().encode(concepts)
        return {**cond, "pooled": cond["pooled"][:-1]}


def test_fields_that_disagree_in_rows_are_refused_by_name():
    with pytest.raises(ValueError, match="tokens has 2, pooled has 1, ids has 2"):
        compose(DictDenoiser(), RowsDisagree(), '"a" AND "b"')
    with pytest.raises(ValueError, match="tokens has 2, pooled has 1"):
        compose_each(DictDenoiser(), RowsDisagree(), ['"a"', '"b"'])
    with pytest.raises(ValueError, match="at least one field"):
        cond_rows({})


def test_mixed_kinds_or_fields_do_not_concatenate():
    enc = DictEncoder()
    with pytest.raises(ValueError, match="plain tensor"):
        cond_cat([torch.zeros(1, 4), enc.null()])
    with pytest.raises(ValueError, match="fields differ"):
        cond_cat([enc.null(), {"tokens": torch.zeros(1, L, D)}])


@pytest.mark.parametrize("kind", ["tensor", "fields"])
def test_row_operations_act_on_every_field_alike(kind):
    enc = DictEncoder()
    table = cond_cat([enc.null(), enc.encode(["a", "b", "c"])])
    if kind == "tensor":
        table = table["tokens"]
    fields = {"x": table} if kind == "tensor" else table
    unwrap = (lambda c: {"x": c}) if kind == "tensor" else (lambda c: c)
    idx = torch.tensor([2, 0, 2, 3])
    assert cond_rows(table) == 4
    for name, v in fields.items():
        assert torch.equal(unwrap(cond_index_select(table, idx))[name], v[idx])
        assert torch.equal(unwrap(cond_repeat_interleave(table, 3))[name], v.repeat_interleave(3, 0))
        assert torch.equal(unwrap(cond_slice(table, 1, 3))[name], v[1:3])
        moved = unwrap(cond_to(table, "meta"))[name]
        assert moved.device.type == "meta" and moved.dtype == v.dtype and moved.shape == v.shape
