import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from compdiff.schedule import FlowSchedule, NoiseSchedule


def test_linear_and_cosine_match_diffusers():
    lin = NoiseSchedule.linear(1000, 1e-4, 0.02)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod.double()
    torch.testing.assert_close(lin.alphas_cumprod, ref, rtol=1e-5, atol=0)  # diffusers builds betas in float32
    cos = NoiseSchedule.cosine(1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    torch.testing.assert_close(cos.alphas_cumprod, ref, rtol=1e-5, atol=1e-12)
    assert cos.alphas_cumprod.dtype == torch.float64 and lin.T == 1000


def test_cosine_follows_its_closed_form():
    s, T = 0.008, 1000
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    a = NoiseSchedule.cosine(T).alphas_cumprod
    for t in (0, 10, 500, 900):  # away from the beta clip at the very end
        assert a[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 50, 999, 1000])
def test_timesteps_match_diffusers(spacing, n):
    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    sched.set_timesteps(n)
    assert torch.equal(NoiseSchedule.linear(1000).timesteps(n, spacing), sched.timesteps)


def test_conversions_round_trip_and_agree():
    sch = NoiseSchedule.cosine(1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    xt = sch.add_noise(x0, eps, t)
    a = sch.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    torch.testing.assert_close(sch.x0_from_eps(xt, eps, t), x0)
    torch.testing.assert_close(sch.eps_from_x0(xt, x0, t), eps)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0  # Salimans & Ho's definition, written independently
    torch.testing.assert_close(sch.prediction_from(x0, eps, t, xt, "v_prediction"), v)
    for kind, out in (("epsilon", eps), ("sample", x0), ("v_prediction", v)):
        got_x0, got_eps = sch.split(xt, out, t, kind)
        torch.testing.assert_close(got_x0, x0)
        torch.testing.assert_close(got_eps, eps)
        torch.testing.assert_close(sch.eps_from_prediction(xt, out, t, kind), eps)
    torch.testing.assert_close(sch.score_from_eps(xt, eps, t), -eps / (1 - a).sqrt())
    with pytest.raises(ValueError, match="discrete table"):
        sch.split(xt, eps, t, "velocity")


def test_scalar_and_tensor_times_agree():
    sch = NoiseSchedule.linear(1000)
    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha, sigma = sch.alpha_sigma(321)
    assert isinstance(alpha, float) and alpha == math.sqrt(float(sch.alphas_cumprod[321]))
    at, st = sch.alpha_sigma(torch.tensor([321]), x)
    assert at.shape == (1, 1) and float(at) == alpha and float(st) == sigma


def test_fractional_timesteps_interpolate_sigma_over_alpha_as_diffusers_euler():
    """EulerDiscreteScheduler ("linspace" spacing) asks for t between integers; its sigma is
    linear in t between table entries (interpolation_type "linear")."""
    sched = EulerDiscreteScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    sched.set_timesteps(7)
    sch = NoiseSchedule.from_diffusers(sched)
    ts = sched.timesteps.double()
    assert not torch.equal(ts, ts.round())  # the case under test
    alpha, sigma = sch.alpha_sigma(ts)
    torch.testing.assert_close(sigma / alpha, sched.sigmas[:-1].double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))


def test_flow_schedule_conversions():
    """Rectified flow: x_t = (1 − t) x0 + t eps; the velocity is eps − x0; split is finite at t = 1."""
    sch = FlowSchedule()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([1.0, 0.75, 0.3, 0.001], dtype=torch.float64)
    tt = t.reshape(-1, 1, 1, 1)
    xt = sch.add_noise(x0, eps, t)
    torch.testing.assert_close(xt, (1 - tt) * x0 + tt * eps)
    u = sch.prediction_from(x0, eps, t, xt)
    torch.testing.assert_close(u, eps - x0)
    got_x0, got_eps = sch.split(xt, u, t)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)
    for kind in ("epsilon", "sample", "v_prediction"):  # the other parametrisations hold too
        got = sch.split(xt[1:], sch.prediction_from(x0[1:], eps[1:], t[1:], xt[1:], kind), t[1:], kind)
        torch.testing.assert_close(got[0], x0[1:])
    assert sch.time_dtype.is_floating_point and sch.prediction == "velocity"


def test_flow_timesteps_match_diffusers_flow_match_euler():
    """diffusers spaces linearly from 1 down to its table's smallest (already shifted) sigma and then
    shifts; t_min = that sigma reproduces it."""
    for shift in (1.0, 3.0):
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        sched.set_timesteps(10)
        ours = FlowSchedule(shift=shift, t_min=float(sched.sigma_min)).timesteps(10)
        torch.testing.assert_close(ours, sched.sigmas[:-1].double(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="spacing"):
        FlowSchedule().timesteps(4, "leading")
    with pytest.raises(ValueError):
        FlowSchedule(shift=0.0)


def test_run_checks_times():
    assert NoiseSchedule.linear(10).run(None) == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="decreasing"):
        NoiseSchedule.linear(10).run([3, 5])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        NoiseSchedule.linear(10).run([10, 5])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        FlowSchedule().run([1.0, 0.0])
    with pytest.raises(ValueError, match="pass timesteps"):
        FlowSchedule().run(None)


def test_schedule_is_frozen_and_validated():
    sch = NoiseSchedule.linear(10)
    with pytest.raises(Exception):
        sch.alphas_cumprod = torch.ones(10)
    with pytest.raises(ValueError, match="decreasing"):
        NoiseSchedule(torch.tensor([0.9, 0.95]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NoiseSchedule(torch.tensor([1.5, 0.5]))
    with pytest.raises(ValueError, match="steps"):
        sch.timesteps(11)


def test_composing_velocities_is_the_eps_rule():
    """docs/operators.md: every parametrisation is A_t·eps + B_t·x_t, so composing rectified-flow
    velocities and converting gives exactly the composed eps (written here independently)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from analytic import default_concepts

    from compdiff.compose import compose

    sch = FlowSchedule()
    gc = default_concepts(sch)  # returns velocities over a FlowSchedule
    expr, w = '"1":1.5 AND "2" AND NOT "3":0.7', {0: 0.0, 1: 1.5, 2: 1.0, 3: -0.7}
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.tensor([1.0, 0.9, 0.5, 0.2, 0.01], dtype=torch.float64)
    u = compose(gc, gc, expr, guidance_scale=2.0)(x, t)
    alpha, sigma = (1 - t).unsqueeze(1), t.unsqueeze(1)

    def eps(j):
        var = gc.stds[j] ** 2
        return sigma * (x - alpha * gc.means[j]) / (alpha**2 * var + sigma**2)

    expected = eps(0) + sum(2.0 * wj * (eps(j) - eps(0)) for j, wj in w.items() if j)
    torch.testing.assert_close(sch.split(x, u, t)[1], expected)
