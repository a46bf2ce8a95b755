"""sample_ddpm / sample_ddim against diffusers' DDPMScheduler / DDIMScheduler, step for step.

The reference is diffusers' own scheduler loop (an independent implementation); both
run in float64 on the same alphas_cumprod, timesteps, eps function and generator.
"""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from compdiff.sampling import generators, sample_ddim, sample_ddpm
from compdiff.schedule import NoiseSchedule

T = 1000


def _eps_fn():
    """A fixed nonlinear eps function of (x, t): tiny random conv net, float64."""
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(8, 3, 3, 3, generator=g, dtype=torch.float64) * 0.3
    w2 = torch.randn(3, 8, 3, 3, generator=g, dtype=torch.float64) * 0.3

    def eps_fn(x, t):
        tt = (t.to(x.dtype) / T).reshape(-1, 1, 1, 1)
        h = torch.tanh(torch.nn.functional.conv2d(x, w1, padding=1) + tt)
        return torch.nn.functional.conv2d(h, w2, padding=1) + 0.5 * x * tt
    return eps_fn


def _to_float64(sched):
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
    if hasattr(sched, "one"):
        sched.one = sched.one.double()
    return sched


def _reference_loop(sched, eps_fn, x, generator, **step_kwargs):
    xs = []
    for t in sched.timesteps:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
        x = sched.step(eps_fn(x, tt), int(t), x, generator=generator, **step_kwargs).prev_sample
        xs.append(x)
    return xs


def _ours(sampler, *args, **kwargs):
    xs = []
    out = sampler(*args, callback=lambda info: xs.append(info.x), **kwargs)
    assert torch.equal(out, xs[-1])
    return xs


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("n", [None, 50])
def test_ddpm_matches_diffusers(beta_schedule, n):
    sched = _to_float64(DDPMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule, clip_sample=False))
    if n is not None:
        sched.set_timesteps(n)
    schedule = NoiseSchedule.from_diffusers(sched)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _reference_loop(sched, _eps_fn(), x_T, torch.Generator().manual_seed(7))
    ours = _ours(sample_ddpm, _eps_fn(), x_T, schedule, timesteps=sched.timesteps if n else None,
                 generator=torch.Generator().manual_seed(7))
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_ddpm_clip_matches_diffusers():
    sched = _to_float64(DDPMScheduler(num_train_timesteps=T, clip_sample=True, clip_sample_range=1.0))
    sched.set_timesteps(20)
    x_T = 3 * torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = _reference_loop(sched, _eps_fn(), x_T, torch.Generator().manual_seed(3))
    ours = _ours(sample_ddpm, _eps_fn(), x_T, NoiseSchedule.from_diffusers(sched), timesteps=sched.timesteps,
                 generator=torch.Generator().manual_seed(3), clip_x0=1.0)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# "linspace" is left out on purpose: diffusers' DDIM always steps from t to t - T//n, which for
# linspace spacing lands between the listed timesteps; compdiff steps to the next listed one.
# (The linspace timesteps themselves are checked against diffusers in test_schedule.py.)
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers(spacing, eta):
    sched = _to_float64(DDIMScheduler(num_train_timesteps=T, clip_sample=False, timestep_spacing=spacing,
                                      set_alpha_to_one=True))
    sched.set_timesteps(25)  # 25 divides 1000: diffusers' prev = t - T//n is then the next listed step
    schedule = NoiseSchedule.from_diffusers(sched)
    assert torch.equal(schedule.timesteps(25, spacing), sched.timesteps)
    x_T = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = _reference_loop(sched, _eps_fn(), x_T, torch.Generator().manual_seed(5), eta=eta)
    ours = _ours(sample_ddim, _eps_fn(), x_T, schedule, sched.timesteps, eta=eta,
                 generator=torch.Generator().manual_seed(5))
    assert len(ours) == 25
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_ddim_clip_uses_clipped_eps_like_diffusers():
    sched = _to_float64(DDIMScheduler(num_train_timesteps=T, clip_sample=True, set_alpha_to_one=True))
    sched.set_timesteps(10)
    x_T = 3 * torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ref = _reference_loop(sched, _eps_fn(), x_T, None, use_clipped_model_output=True)
    ours = _ours(sample_ddim, _eps_fn(), x_T, NoiseSchedule.from_diffusers(sched), sched.timesteps, clip_x0=1.0)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_per_sample_generators_match_diffusers_list_and_ignore_batch_size():
    sched = _to_float64(DDPMScheduler(num_train_timesteps=T, clip_sample=False))
    sched.set_timesteps(10)
    schedule = NoiseSchedule.from_diffusers(sched)
    x_T = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ref = _reference_loop(sched, _eps_fn(), x_T, generators([10, 11, 12]))[-1]
    ours = sample_ddpm(_eps_fn(), x_T, schedule, sched.timesteps, generator=generators([10, 11, 12]))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # sample 1 alone, with its own seed, is the same image as in the batch of three
    alone = sample_ddpm(_eps_fn(), x_T[1:2], schedule, sched.timesteps, generator=generators([11]))
    torch.testing.assert_close(alone[0], ours[1], rtol=0, atol=1e-10)


def test_sampler_rejects_bad_input():
    schedule = NoiseSchedule.linear(100)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_ddim(lambda x, t: x, x, schedule, [10, 20])
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        sample_ddim(lambda x, t: x, x, schedule, [100, 5])
    with pytest.raises(ValueError, match="2 generators"):
        sample_ddpm(lambda x, t: x, torch.zeros(3, 3), schedule, [5, 0], generator=generators([1, 2]))
