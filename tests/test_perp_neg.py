"""Perpendicular NOT (negation="perp"): projections per sample, never over the batch."""
import torch
from test_compose import ConvDenoiser, TableEncoder

from compdiff.compose import compose


def _setup():
    den, enc = ConvDenoiser(), TableEncoder()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[1] *= 3.0  # two clearly different samples
    return den, enc, x, torch.tensor([200, 700])


def _eps(den, enc, x, t, concept=None):
    row = enc.null() if concept is None else enc.encode([concept])
    return den(x, t, row.expand(x.shape[0], -1))


def test_negative_term_is_orthogonal_to_the_positive_delta_per_sample():
    den, enc, x, t = _setup()
    s = 2.0
    e0, ea, eb, ec = (_eps(den, enc, x, t, c) for c in (None, "a", "b", "c"))
    pos = s * (ea - e0) + 1.5 * s * (eb - e0)
    out = compose(den, enc, '"a" AND "b":1.5 AND NOT "c":0.7', guidance_scale=s, negation="perp")(x, t)
    neg = out - e0 - pos  # the negative term's contribution
    dots = (neg * pos).flatten(1).sum(1)
    assert torch.all(dots.abs() < 1e-10 * (neg.flatten(1).norm(dim=1) * pos.flatten(1).norm(dim=1)))
    # and it is exactly -w·s·(d_c minus its projection on pos), sample by sample
    for i in range(2):
        d, p = (ec - e0)[i], pos[i]
        ref = -0.7 * s * (d - (d * p).sum() / (p * p).sum() * p)
        torch.testing.assert_close(neg[i], ref, rtol=1e-10, atol=1e-10)


def test_batch_of_two_equals_each_alone():
    den, enc, x, t = _setup()
    eps_fn = compose(den, enc, '"a" AND NOT "c" AND NOT "b":0.5', guidance_scale=3.0, negation="perp", rescale=0.5)
    batch = eps_fn(x, t)
    for i in range(2):
        torch.testing.assert_close(eps_fn(x[i:i + 1], t[i:i + 1]), batch[i:i + 1], rtol=1e-12, atol=1e-12)


def test_perp_equals_plain_without_negatives_or_without_positives():
    den, enc, x, t = _setup()
    for expr in ('"a" AND "b":2', 'NOT "c"'):
        plain = compose(den, enc, expr, guidance_scale=2.0)(x, t)
        torch.testing.assert_close(compose(den, enc, expr, guidance_scale=2.0, negation="perp")(x, t), plain,
                                   rtol=1e-12, atol=1e-12)
    assert not torch.allclose(compose(den, enc, '"a" AND NOT "c"', negation="perp")(x, t),
                              compose(den, enc, '"a" AND NOT "c"')(x, t))
