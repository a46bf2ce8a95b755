"""MCMC-corrected sampling (compdiff.correctors via the samplers' ``corrector=Corrector(...)`` option).

The analytic setting of tests/test_analytic_gaussians.py: Gaussian concepts with exact eps,
so the composed eps is affine per coordinate, every ULA / U-HMC / DDPM step is affine, and
the exact law of the sampler's output is Gaussian with a mean and variance we propagate
here in closed form, independently of the sampler code (U-HMC: the 2x2 covariance of
position and momentum). Two checks, as there:

1. the samples follow that exact law (5 standard errors);
2. the corrected output is within 5% of the product AND defines (sample covariance,
   closed form), where the plain sampler misses it by > 25%, at <= 4x the model
   evaluations of plain sampling (counted).
"""
import math

import numpy as np
import pytest
import torch
from analytic import default_concepts

from compdiff.compose import compose
from compdiff.correctors import Corrector
from compdiff.errors import InputError
from compdiff.sampling import generators, randn, sample_ddim, sample_ddpm
from compdiff.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.linear(1000)
N = 20000
STEPS, K_CORR, RANGE, C, DAMP = 250, 6, (0.5, 1.0), 1.0, 0.5  # 250 + 125·6 = 1000 evals = 4x plain


def _propagate(gc, weights, ts, correct=None, k=0, c=1.0, rng=(0.0, 1.0), damping=0.0):
    """Exact output mean (D,) and variance of DDPM (+ corrector) for x_T ~ N(0, I)."""
    a = SCHEDULE.alphas_cumprod.tolist()
    m, v = np.zeros(gc.means.shape[1]), 1.0
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        a_t, a_s = a[t], (a[s] if s >= 0 else 1.0)
        alpha, sigma = math.sqrt(a_t), math.sqrt(1 - a_t)
        A, b = gc.composed_linear(weights, t)
        b = b.numpy()
        if correct and rng[0] <= i / len(ts) < rng[1]:
            h = c * sigma**2
            g, gb = -A / sigma, -b / sigma  # score = g x + gb
            if correct == "ula":
                for _ in range(k):  # x <- (1 + h g) x + h gb + sqrt(2h) z
                    m, v = (1 + h * g) * m + h * gb, (1 + h * g) ** 2 * v + 2 * h
            else:  # state (x, v): covariance C, means (m, mv); momentum fresh N(0, 1) per level
                d = math.sqrt(2 * h)
                Cov, mv = np.array([[v, 0.0], [0.0, 1.0 if damping > 0 else 0.0]]), np.zeros_like(m)
                kick, drift = np.array([[1, 0], [d / 2 * g, 1]]), np.array([[1, d], [0, 1]])
                for _ in range(k):
                    R = np.diag([1.0, damping])
                    Cov = R @ Cov @ R.T + np.diag([0.0, 1 - damping**2])
                    mv = damping * mv
                    mv = mv + d / 2 * (g * m + gb)
                    m = m + d * mv
                    mv = mv + d / 2 * (g * m + gb)
                    L = kick @ drift @ kick
                    Cov = L @ Cov @ L.T
                v = Cov[0, 0]
        cx, dx = (1 - sigma * A) / alpha, -sigma * b / alpha  # x0 = cx x + dx
        beta = 1 - a_t / a_s
        k0, k1 = math.sqrt(a_s) * beta / (1 - a_t), math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)
        P, q = k0 * cx + k1, k0 * dx
        m, v = P * m + q, P * P * v + ((1 - a_s) / (1 - a_t) * beta if s >= 0 else 0.0)
    return m, v


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def _sample(gc, weights, seed, **options):
    eps_fn = Counting(compose(gc, gc, " AND ".join(f'"{j}":{w}' for j, w in weights.items())))
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(N, 2, generator=g, dtype=torch.float64)
    x = sample_ddpm(eps_fn, x_T, SCHEDULE, SCHEDULE.timesteps(STEPS), generator=g, **options)
    return x, eps_fn.calls


@pytest.mark.parametrize("correct", ["ula", "uhmc"])
@pytest.mark.parametrize("weights", [{1: 1.0, 2: 1.0}, {1: 1.0, 2: 1.0, 3: 1.0}], ids=["K2", "K3"])
def test_correction_reaches_the_product_where_plain_sampling_does_not(weights, correct):
    gc = default_concepts(SCHEDULE)
    mean, var = gc.product(weights)
    ts = SCHEDULE.timesteps(STEPS).tolist()
    options = dict(corrector=Corrector(correct, steps=K_CORR, step_size=C, range=RANGE, damping=DAMP))
    plain, plain_calls = _sample(gc, weights, 7)
    fixed, calls = _sample(gc, weights, 8, **options)
    assert plain_calls == STEPS and calls == STEPS + K_CORR * STEPS // 2 <= 4 * plain_calls
    # 1. the samples follow the exact law of the corrected sampler (independent propagation)
    m, v = _propagate(gc, weights, ts, correct, K_CORR, C, RANGE, DAMP)
    se_mean, se_var = math.sqrt(v / N), v * math.sqrt(2 / (N - 1))
    assert np.all(np.abs(fixed.mean(0).numpy() - m) < 5 * se_mean), (fixed.mean(0), m)
    assert torch.all((fixed.var(0) - v).abs() < 5 * se_var), (fixed.var(0), v)
    # 2. within 5% of the product's covariance (var·I); plain is far off
    cov = torch.cov(fixed.T)
    assert (cov - var * torch.eye(2, dtype=cov.dtype)).abs().max() / var < 0.05, cov / var
    assert (fixed.mean(0) - mean).abs().max() < 0.03
    plain_cov = torch.cov(plain.T)
    assert plain_cov.diagonal().max() / var < 0.75, plain_cov / var


def test_noisier_half_alone_changes_nothing_measurable():
    """Measured, and documented: the plain sampler's error is made on the clean end."""
    gc = default_concepts(SCHEDULE)
    w = {1: 1.0, 2: 1.0}
    _, var = gc.product(w)
    ts = SCHEDULE.timesteps(STEPS).tolist()
    _, v_plain = _propagate(gc, w, ts)
    _, v_noisy = _propagate(gc, w, ts, "ula", 6, 1.0, (0.0, 0.5))
    _, v_clean = _propagate(gc, w, ts, "ula", 6, 1.0, (0.5, 1.0))
    assert abs(v_noisy - v_plain) / var < 0.01 and abs(v_clean / var - 1) < 0.03


def test_uhmc_without_momentum_persistence_is_ula():
    gc = default_concepts(SCHEDULE)
    eps_fn = compose(gc, gc, '"1" AND "2"')
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = {}
    for kind in ("ula", "uhmc"):
        out[kind] = sample_ddim(eps_fn, x_T, SCHEDULE, 20, generator=torch.Generator().manual_seed(1),
                                corrector=Corrector(kind, steps=3, damping=0.0))
    torch.testing.assert_close(out["ula"], out["uhmc"], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sampler,correct", [("ddim", "ula"), ("ddpm", "uhmc")])
def test_per_sample_generators_sample_i_depends_only_on_seed_i(sampler, correct):
    gc = default_concepts(SCHEDULE)
    eps_fn = compose(gc, gc, '"1" AND "2" AND "3"')

    def run(seeds):
        gens = generators(seeds)
        x_T = randn((len(seeds), 2), gens, dtype=torch.float64)
        fn = sample_ddim if sampler == "ddim" else sample_ddpm
        return fn(eps_fn, x_T, SCHEDULE, 10, generator=gens, corrector=Corrector(correct, steps=2, range=(0.0, 1.0)))

    batch = run([11, 12, 13])
    torch.testing.assert_close(run([12]), batch[1:2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run([13, 11]), batch[[2, 0]], rtol=1e-12, atol=1e-12)


def test_model_evaluations_and_default_off():
    gc = default_concepts(SCHEDULE)
    eps_fn = Counting(compose(gc, gc, '"1" AND "2"'))
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = sample_ddim(eps_fn, x_T, SCHEDULE, 20)
    assert eps_fn.calls == 20
    assert torch.equal(sample_ddim(eps_fn, x_T, SCHEDULE, 20, corrector=None), plain)
    eps_fn.calls = 0
    sample_ddim(eps_fn, x_T, SCHEDULE, 20, corrector=Corrector("ula", steps=3, range=(0.75, 1.0)))
    assert eps_fn.calls == 20 + 3 * 5  # levels 15..19 of 20 corrected, 3 extra each


@pytest.mark.parametrize("bad", [dict(kind="mala"), dict(kind="ula", steps=0), dict(kind="ula", steps=1.5),
                                 dict(kind="ula", step_size=0.0), dict(kind="ula", step_size=float("nan")),
                                 dict(kind="ula", range=(0.5, 0.5)), dict(kind="ula", range=(-0.1, 1.0)),
                                 dict(kind="uhmc", damping=1.0)])
def test_bad_corrector_options_are_input_errors(bad):
    with pytest.raises(InputError):
        Corrector(**bad)


def test_a_corrector_must_be_a_corrector_object():
    gc = default_concepts(SCHEDULE)
    with pytest.raises(InputError, match="Corrector"):
        sample_ddpm(compose(gc, gc, '"1"'), torch.zeros(2, 2, dtype=torch.float64), SCHEDULE, 5, corrector="ula")
