"""Algebra identities of compose() with a random small conv denoiser (float64).

Every reference below is written out from the paper's equation with separate
denoiser calls per condition, never through compose() itself.
"""
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from compdiff.compose import compose
from compdiff.compose_each import compose_each
from compdiff.errors import InputError


class ConvDenoiser(torch.nn.Module):
    """eps = conv(tanh(conv(x) + film(cond, t))): nonlinear in x, cond and t. Counts calls and rows."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1).double()
        self.c2 = torch.nn.Conv2d(8, 3, 3, padding=1).double()
        self.emb = torch.nn.Linear(5, 8).double()
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.4
        self.calls, self.rows = 0, 0

    @torch.no_grad()
    def forward(self, x, t, cond):
        self.calls += 1
        self.rows += x.shape[0]
        h = self.c1(x) + self.emb(torch.cat([cond, t[:, None].double() / 1000], 1))[:, :, None, None]
        return self.c2(torch.tanh(h))


class TableEncoder:
    """Concept name -> a fixed random 4-vector; null = zeros. Counts encode calls."""

    def __init__(self):
        self.calls = 0

    def encode(self, concepts):
        self.calls += 1
        rows = []
        for c in concepts:
            g = torch.Generator().manual_seed(sum(map(ord, c)) * 7919 + len(c))
            rows.append(torch.randn(4, generator=g, dtype=torch.float64))
        return torch.stack(rows)

    def null(self):
        return torch.zeros(1, 4, dtype=torch.float64)


@pytest.fixture
def setup():
    den, enc = ConvDenoiser(), TableEncoder()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 6, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 500, 999])
    return den, enc, x, t


def _eps(den, enc, x, t, concept=None):
    """eps(x, t | c) by a direct call; concept None is the null condition."""
    row = enc.null() if concept is None else enc.encode([concept])
    return den(x, t, row.expand(x.shape[0], -1))


def test_one_concept_equals_classifier_free_guidance(setup):
    den, enc, x, t = setup
    for s in (1.0, 3.5, -2.0):
        e_u, e_c = _eps(den, enc, x, t), _eps(den, enc, x, t, "red cube")
        torch.testing.assert_close(compose(den, enc, '"red cube"', guidance_scale=s)(x, t), e_u + s * (e_c - e_u))


def test_all_weights_zero_give_the_unconditional_model_exactly(setup):
    den, enc, x, t = setup
    e_u = _eps(den, enc, x, t)
    for expr in ['"a":0 AND "b":0', '"a" AND NOT "a"', '("a" AND "b"):0']:
        assert torch.equal(compose(den, enc, expr, guidance_scale=7.0)(x, t), e_u)


def test_batched_composition_equals_per_concept_loop(setup):
    den, enc, x, t = setup
    s, terms = 2.5, {"a red cube": 1.0, "a blue sphere": 1.5, "metal": -0.8}
    e_u = _eps(den, enc, x, t)
    ref = e_u + sum(w * s * (_eps(den, enc, x, t, c) - e_u) for c, w in terms.items())
    out = compose(den, enc, '"a red cube" AND "a blue sphere":1.5 AND NOT "metal":0.8', guidance_scale=s)(x, t)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # mode="mean": every term divided by the number of positive terms (here 2)
    ref_mean = e_u + sum(w * s / 2 * (_eps(den, enc, x, t, c) - e_u) for c, w in terms.items())
    out = compose(den, enc, '"a red cube" AND "a blue sphere":1.5 AND NOT "metal":0.8', guidance_scale=s,
                  mode="mean")(x, t)
    torch.testing.assert_close(out, ref_mean, rtol=1e-12, atol=1e-12)


def test_not_flips_the_sign_of_exactly_its_term(setup):
    den, enc, x, t = setup
    s = 3.0
    plus = compose(den, enc, '"a" AND "b"', guidance_scale=s)(x, t)
    minus = compose(den, enc, '"a" AND NOT "b"', guidance_scale=s)(x, t)
    e_u, e_a, e_b = _eps(den, enc, x, t), _eps(den, enc, x, t, "a"), _eps(den, enc, x, t, "b")
    torch.testing.assert_close(plus - minus, 2 * s * (e_b - e_u))  # only b's term changed, and by its sign
    torch.testing.assert_close((plus + minus) / 2, e_u + s * (e_a - e_u))  # a's term untouched


def test_one_forward_per_call_and_duplicates_evaluated_once(setup):
    den, enc, x, t = setup
    eps_fn = compose(den, enc, '"a" AND "b" AND "a":0.5 AND ("b" AND "c")', guidance_scale=2.0)
    assert [term.concept for term in eps_fn.terms] == ["a", "b", "c"]
    den.calls = den.rows = 0
    for _ in range(4):
        eps_fn(x, t)
    assert den.calls == 4  # one batched forward per step
    assert den.rows == 4 * x.shape[0] * (3 + 1)  # B·(K'+1) rows, K' = 3 unique concepts
    assert enc.calls == 1  # conditions encoded once, at compose time, not per step


@pytest.mark.parametrize("max_batch", [1, 4, 7, 100])
def test_chunked_equals_unchunked(setup, max_batch):
    den, enc, x, t = setup
    expr = '"a" AND "b":2 AND NOT "c"'
    full = compose(den, enc, expr, guidance_scale=4.0)(x, t)
    den.calls = 0
    chunked = compose(den, enc, expr, guidance_scale=4.0, max_batch=max_batch)(x, t)
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=1e-12)
    assert den.calls == -(-x.shape[0] * 4 // max_batch)


def test_rescale_matches_diffusers_for_one_concept_and_is_per_sample(setup):
    den, enc, x, t = setup
    s, phi = 7.5, 0.7
    e_u, e_c = _eps(den, enc, x, t), _eps(den, enc, x, t, "a")
    ref = rescale_noise_cfg(e_u + s * (e_c - e_u), e_c, guidance_rescale=phi)
    eps_fn = compose(den, enc, '"a"', guidance_scale=s, rescale=phi)
    torch.testing.assert_close(eps_fn(x, t), ref)
    alone = compose(den, enc, '"a" AND "b" AND NOT "c"', guidance_scale=s, rescale=phi)
    batch = alone(x, t)
    for i in range(x.shape[0]):
        torch.testing.assert_close(alone(x[i:i + 1], t[i:i + 1]), batch[i:i + 1])


def test_scalar_t_is_broadcast(setup):
    den, enc, x, _ = setup
    eps_fn = compose(den, enc, '"a"', guidance_scale=2.0)
    torch.testing.assert_close(eps_fn(x, torch.tensor(300)), eps_fn(x, torch.full((3,), 300)))


@pytest.mark.parametrize("t", [torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64), torch.tensor(0.75),
                               torch.tensor([3, 400, 999]), torch.tensor(7)])
def test_t_reaches_the_denoiser_in_its_own_dtype(setup, t):
    """Float times of a continuous-time schedule (rectified flow, t in [0, 1]) are not rounded or
    cast to timesteps; int64 timesteps stay int64. Only a scalar is expanded to B."""
    den, enc, x, _ = setup
    seen = []

    def recording(x_in, t_in, cond):
        seen.append(t_in)
        return den(x_in, t_in, cond)

    for eps_fn in (compose(recording, enc, '"a" AND NOT "b"', guidance_scale=2.0),
                   compose_each(recording, enc, ['"a"', '"b" AND "c"', 'NOT "a"'], guidance_scale=2.0)):
        seen.clear()
        eps_fn(x, t)
        (t_in,) = seen
        assert t_in.dtype == t.dtype
        assert torch.equal(t_in.reshape(-1, 3), t.expand(3).repeat(3, 1))  # (G·B,) condition-major, G = 3


def test_bad_arguments_are_input_errors(setup):
    den, enc, _, _ = setup
    with pytest.raises(InputError, match="NOT of an expression with OR"):  # OR itself composes (tests/test_or.py)
        compose(den, enc, 'NOT ("a" OR "b")')
    with pytest.raises(InputError, match="mode"):
        compose(den, enc, '"a"', mode="max")
    with pytest.raises(InputError, match="rescale"):
        compose(den, enc, '"a"', rescale=1.5)
    with pytest.raises(InputError, match="max_batch"):
        compose(den, enc, '"a"', max_batch=0)
