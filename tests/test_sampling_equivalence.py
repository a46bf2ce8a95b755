"""The samplers against diffusers' schedulers, step for step: DDPM (DDPMScheduler), DDIM
(DDIMScheduler), DPM-Solver++(2M) (DPMSolverMultistepScheduler, dpmsolver++, order 2) and
Euler (EulerDiscreteScheduler on VP tables, FlowMatchEulerDiscreteScheduler on rectified flow).

The reference is diffusers' own scheduler loop (an independent implementation); both
run in float64 on the same alphas_cumprod, timesteps, eps function and generator.
"""
import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       FlowMatchEulerDiscreteScheduler)

from compdiff.sampling import generators, sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_euler
from compdiff.schedule import FlowSchedule, NoiseSchedule

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


def _scheduler_loop(sched, fn, x, scale_by=None):
    """diffusers' own loop (scale_model_input, step), collecting each step's sample; ``scale_by``
    maps a scheduler time to the time our fn expects."""
    xs = []
    x = x * getattr(sched, "init_noise_sigma", 1.0)  # flow-matching schedulers have none: x_1 is the noise
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        tt = (scale_by(t) if scale_by else t).reshape(1).expand(x.shape[0])
        x = sched.step(fn(inp, tt), t, x).prev_sample
        xs.append(x)
    return xs


# Tolerances here: 1e-5 absolute plus 1e-5 relative. These diffusers schedulers step in float32
# whatever the sample's dtype, which leaves relative differences up to ~5e-6 (measured) on samples that
# reach |x| ~ 60 (and y = x/alpha ~ 1e3 for Euler) early in a run; the cosine table (a_999 ~ 2e-9, so
# x0 ~ 1e4 from this test's arbitrary eps function) amplifies them in the second-order extrapolation
# and is left to the linear schedules, SD's "scaled_linear" included.
@pytest.mark.parametrize("n", [10, 25])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_dpmpp_2m_matches_diffusers(n, beta_schedule):
    sched = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule=beta_schedule,
                                        algorithm_type="dpmsolver++", solver_order=2)
    sched.set_timesteps(n)
    sched.sigmas = sched.sigmas.double()  # the scheduler keeps float32 sigmas; compare in float64
    schedule = NoiseSchedule.from_diffusers(sched)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = _scheduler_loop(sched, _eps_fn(), x_T)
    ours = _ours(sample_dpmpp_2m, _eps_fn(), x_T, schedule, sched.timesteps)
    assert len(ours) == len(ref) == n
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])  # linspace asks for fractional timesteps
def test_euler_matches_diffusers_euler_discrete(spacing):
    """EulerDiscreteScheduler keeps y = x/alpha; ours keeps x, so its step i is ours divided by alpha_s."""
    sched = EulerDiscreteScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    sched.set_timesteps(20)
    sched.sigmas = sched.sigmas.double()
    schedule = NoiseSchedule.from_diffusers(sched)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    ref = _scheduler_loop(sched, _eps_fn(), x_T)
    # diffusers starts y at x_T·sigma_max for these spacings (not x_T·sqrt(sigma_max² + 1)): start x there too
    x_start = x_T * float(sched.init_noise_sigma) * schedule.alpha_sigma(float(sched.timesteps[0]))[0]
    ours = _ours(sample_euler, _eps_fn(), x_start, schedule, sched.timesteps.double())
    alpha_next = [schedule.alpha_sigma(float(t))[0] for t in sched.timesteps[1:]] + [1.0]
    for a, b, alpha_s in zip(ours, ref, alpha_next):
        torch.testing.assert_close(a / alpha_s, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_matches_diffusers_flow_match_euler(shift):
    """Rectified flow: our fn returns the velocity at t = sigma; diffusers hands the model sigma·1000."""
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    sched.set_timesteps(12)
    sched.sigmas = sched.sigmas.double()
    schedule = FlowSchedule(shift=shift, t_min=float(sched.sigma_min))
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    velocity = _eps_fn()  # any smooth function of (x, t) will do for a step-for-step check
    fn = lambda x, t: velocity(x, t * T)  # noqa: E731
    ref = _scheduler_loop(sched, velocity, x_T)
    ours = _ours(sample_euler, fn, x_T, schedule, 12)
    assert len(ours) == len(ref) == 12
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
