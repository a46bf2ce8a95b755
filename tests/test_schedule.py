import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from compdiff.schedule import NoiseSchedule


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
    torch.testing.assert_close(sch.x0_from_eps(xt, eps, t), x0)
    torch.testing.assert_close(sch.eps_from_x0(xt, x0, t), eps)
    a = sch.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0  # Salimans & Ho's definition, written independently
    torch.testing.assert_close(sch.v_from_eps(xt, eps, t), v)
    torch.testing.assert_close(sch.eps_from_v(xt, v, t), eps)
    torch.testing.assert_close(sch.eps_from_prediction(xt, v, t, "v_prediction"), eps)
    torch.testing.assert_close(sch.eps_from_prediction(xt, x0, t, "sample"), eps)
    score = sch.score_from_eps(xt, eps, t)
    torch.testing.assert_close(score, -eps / (1 - a).sqrt())
    torch.testing.assert_close(sch.eps_from_score(xt, score, t), eps)


def test_v_conversion_agrees_with_diffusers():
    sched = DDPMScheduler(num_train_timesteps=1000)
    sch = NoiseSchedule.from_diffusers(sched)
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([3, 700])
    xt = sched.add_noise(x0, eps, t)
    v = sched.get_velocity(x0, eps, t)
    torch.testing.assert_close(sch.eps_from_v(xt, v, t), eps, atol=1e-5, rtol=0)


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
    assert NoiseSchedule.from_config(sch.to_config()).alphas_cumprod.equal(sch.alphas_cumprod)
