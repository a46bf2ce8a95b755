"""compose_each: sample b composed with its own expression equals compose() of that expression alone."""
import pytest
import torch
from test_compose import ConvDenoiser, TableEncoder

from compdiff.compose import compose
from compdiff.compose_each import compose_each
from compdiff.errors import InputError

EXPRS = ['"a" AND "b"', '"c"', '"a" AND NOT "d":0.5 AND "e":2', '"a":0']


def test_each_sample_follows_its_own_expression():
    den, enc = ConvDenoiser(), TableEncoder()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(len(EXPRS), 3, 6, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([5, 300, 700, 999])
    for mode in ("sum", "mean"):
        each = compose_each(den, enc, EXPRS, guidance_scale=2.5, mode=mode)
        out = each(x, t)
        for b, e in enumerate(EXPRS):
            ref = compose(den, enc, e, guidance_scale=2.5, mode=mode)(x[b:b + 1], t[b:b + 1])
            torch.testing.assert_close(out[b:b + 1], ref, rtol=1e-12, atol=1e-12)


def test_one_forward_per_step_and_chunking():
    den, enc = ConvDenoiser(), TableEncoder()
    x = torch.randn(len(EXPRS), 3, 6, 6, dtype=torch.float64)
    t = torch.full((len(EXPRS),), 400)
    full = compose_each(den, enc, EXPRS, guidance_scale=3.0)
    den.calls = 0
    ref = full(x, t)
    assert den.calls == 1 and den.rows == len(EXPRS) * 4  # Kmax = 3 terms + null
    chunked = compose_each(den, enc, EXPRS, guidance_scale=3.0, max_batch=5)(x, t)
    torch.testing.assert_close(chunked, ref, rtol=1e-12, atol=1e-12)
    assert enc.calls == 2  # one encode per composition, for every expression at once


def test_perp_negation_matches_compose_per_sample():
    den, enc = ConvDenoiser(), TableEncoder()
    exprs = ['"a" AND NOT "b"', '"c" AND "d" AND NOT "e":0.5']
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = torch.tensor([200, 800])
    out = compose_each(den, enc, exprs, guidance_scale=2.0, negation="perp")(x, t)
    for b, e in enumerate(exprs):
        ref = compose(den, enc, e, guidance_scale=2.0, negation="perp")(x[b:b + 1], t[b:b + 1])
        torch.testing.assert_close(out[b:b + 1], ref, rtol=1e-12, atol=1e-12)
    plain = compose_each(den, enc, exprs, guidance_scale=2.0)(x, t)
    assert not torch.allclose(out, plain)  # the projection changed the NOT terms


@pytest.mark.parametrize("negation", ["plain", "perp"])
def test_rescale_matches_compose_per_sample(negation):
    """eps_ref per sample: the mean of its positive concepts, eps(∅) without one (NOT "c");
    expressions of 1 to 3 terms, padded to Kmax = 3 in one forward."""
    den, enc = ConvDenoiser(), TableEncoder()
    exprs = ['"a" AND "b"', 'NOT "c"', '"c" AND NOT "d":0.5 AND "e":2', '"a":0', '"b"']
    x = torch.randn(len(exprs), 3, 6, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    t = torch.tensor([50, 250, 450, 650, 850])
    out = compose_each(den, enc, exprs, guidance_scale=2.5, rescale=0.7, negation=negation)(x, t)
    for b, e in enumerate(exprs):
        ref = compose(den, enc, e, guidance_scale=2.5, rescale=0.7, negation=negation)(x[b:b + 1], t[b:b + 1])
        torch.testing.assert_close(out[b:b + 1], ref, rtol=1e-12, atol=1e-12)
    plain = compose_each(den, enc, exprs, guidance_scale=2.5, negation=negation)(x, t)
    changed = [not torch.allclose(out[b], plain[b]) for b in range(len(exprs))]
    assert changed == [True, True, True, False, True]  # rescale acted on every guided sample


def test_bad_options_are_input_errors():
    den, enc = ConvDenoiser(), TableEncoder()
    for bad, match in ((dict(rescale=1.5), "rescale"), (dict(max_batch=0), "max_batch"),
                       (dict(negation="orth"), "negation"), (dict(mode="max"), "mode")):
        with pytest.raises(InputError, match=match):
            compose_each(den, enc, ['"a"'], **bad)
