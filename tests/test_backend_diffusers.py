"""compdiff.backends.diffusers on tiny random Stable Diffusion pipelines (built here, no downloads).

The independent references are diffusers itself: StableDiffusionPipeline.__call__ for one
concept (classifier-free guidance), and, for K concepts, loops written here that call the
UNet once per concept and apply the composition formula, stepping a diffusers scheduler.
Every test in this module fails on any attempt to open a network connection.
"""
import json
import socket
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import sd_tiny  # noqa: E402

from compdiff import compose, generators, randn, sample_ddim  # noqa: E402
from compdiff.backends import DiffusersBackend, PromptTruncatedWarning, sample_with_scheduler  # noqa: E402
from compdiff.errors import InputError  # noqa: E402

STEPS = 4


pytestmark = pytest.mark.usefixtures("no_network")  # tests/conftest.py: any socket connect fails


@pytest.fixture(scope="module")
def sd(tmp_path_factory, no_network):
    """(pipeline object, its saved folder) with an eps-prediction UNet."""
    folder = tmp_path_factory.mktemp("sd") / "pipe"
    return sd_tiny.save_pipeline(folder), folder


@pytest.fixture(scope="module")
def sd_v(tmp_path_factory, no_network):
    folder = tmp_path_factory.mktemp("sdv") / "pipe"
    return sd_tiny.save_pipeline(folder, prediction_type="v_prediction", seed=1), folder


@pytest.fixture(scope="module")
def backend(sd):
    return DiffusersBackend.from_pretrained(sd[1])


@pytest.fixture(scope="module")
def backend_v(sd_v):
    return DiffusersBackend.from_pretrained(sd_v[1])


# ---- the looped reference -------------------------------------------------------------
def _embed(pipe, prompt):
    """diffusers' own text encoding of one prompt, (1, L, D)."""
    return pipe.encode_prompt(prompt, "cpu", 1, False)[0]


@torch.no_grad()
def _reference(pipe, scheduler, terms, scale, x_T, steps=STEPS):
    """One UNet call per concept and one for the empty prompt, combined in the MODEL's own
    parametrisation (eps or v, as diffusers' pipeline does CFG), stepped with `scheduler`:
    out = out(∅) + Σ_i s·w_i·(out(c_i) − out(∅))."""
    null = _embed(pipe, "")
    embs = [(_embed(pipe, c), w) for c, w in terms]
    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        rows = []
        for b in range(x.shape[0]):  # batch 1 per call, like the community pipeline
            xb = x_in[b:b + 1]
            o_null = pipe.unet(xb, t, encoder_hidden_states=null).sample
            o = o_null.clone()
            for emb, w in embs:
                o = o + scale * w * (pipe.unet(xb, t, encoder_hidden_states=emb).sample - o_null)
            rows.append(o)
        x = scheduler.step(torch.cat(rows), t, x).prev_sample
    return x


def _fresh(scheduler):
    return type(scheduler).from_config(scheduler.config)


# ---- equivalence with diffusers ---------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2])
def test_one_concept_equals_stable_diffusion_pipeline(sd, backend, n):
    pipe, _ = sd
    gens = generators(list(range(10, 10 + n)))
    expected = pipe("a red cat", guidance_scale=3.0, num_inference_steps=STEPS, num_images_per_prompt=n,
                    generator=gens if n > 1 else gens[0], output_type="latent").images
    eps_fn = compose(backend.denoiser, backend.encoder, "a red cat", guidance_scale=3.0)
    x_T = randn((n, *backend.latent_shape), generators(list(range(10, 10 + n))))
    ours = sample_with_scheduler(eps_fn, x_T, pipe.scheduler, STEPS)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # compdiff's own DDIM, timesteps spaced as the scheduler config says: the same latents
    ours_ddim = sample_ddim(eps_fn, x_T, backend.schedule, backend.timesteps(STEPS))
    torch.testing.assert_close(ours_ddim, expected, atol=1e-5, rtol=0)
    # per-sample seeds: the convenience call (compdiff.generate) with the pipeline's own spacing ("leading"
    # + steps_offset) or its own scheduler gives the same, and image i depends only on seed i
    one_call = backend.sample_latents("a red cat", n=n, steps=STEPS, guidance_scale=3.0, seeds=range(10, 10 + n),
                                      spacing="leading")
    torch.testing.assert_close(one_call, expected, atol=1e-5, rtol=0)
    own = backend.sample_latents("a red cat", n=n, steps=STEPS, guidance_scale=3.0, seeds=range(10, 10 + n),
                                 scheduler="pipeline")
    torch.testing.assert_close(own, expected, atol=1e-5, rtol=0)
    alone = backend.sample_latents("a red cat", n=1, steps=STEPS, guidance_scale=3.0, seeds=[10 + n - 1],
                                   spacing="leading")
    torch.testing.assert_close(one_call[-1:], alone, atol=1e-5, rtol=0)
    # the library's default is "trailing" (the first step at t = T - 1, pure noise), as compdiff sample's
    trailing = sample_ddim(eps_fn, x_T, backend.schedule, backend.schedule.timesteps(STEPS, "trailing"))
    default = backend.sample_latents("a red cat", n=n, steps=STEPS, guidance_scale=3.0, seeds=range(10, 10 + n))
    assert torch.equal(default, trailing)


EXPR = 'a red cat AND "the stone" :0.5 AND NOT blue'
TERMS = [("a red cat", 1.0), ("the stone", 0.5), ("blue", -1.0)]


def test_k_concepts_equal_looped_reference(sd, backend):
    pipe, _ = sd
    eps_fn = compose(backend.denoiser, backend.encoder, EXPR, guidance_scale=2.5)
    x_T = randn((2, *backend.latent_shape), generators([3, 4]))
    ours = sample_with_scheduler(eps_fn, x_T, pipe.scheduler, STEPS)
    expected = _reference(pipe, _fresh(pipe.scheduler), TERMS, 2.5, x_T)
    # float32: one call of B·(K+1) rows against K+1 calls of one row sums in another order; on a fresh
    # install (diffusers 0.42.1) one element of 512 differed by 1.03e-5 (relative 6.7e-6), so a relative
    # term joins the absolute one. Any difference in the rule itself is orders of magnitude larger.
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_not_flips_its_term(backend):
    x = randn((2, *backend.latent_shape), generators([5, 6]))
    t = torch.tensor([500, 500])
    e_and = compose(backend.denoiser, backend.encoder, "a red cat AND blue", guidance_scale=2.0)(x, t)
    e_not = compose(backend.denoiser, backend.encoder, "a red cat AND NOT blue", guidance_scale=2.0)(x, t)
    cond = torch.cat([backend.encoder.null(), backend.encoder.encode(["blue"])]).repeat_interleave(2, 0)
    e_null, e_blue = backend.denoiser(torch.cat([x, x]), torch.cat([t, t]), cond).chunk(2)
    # AND adds +s·(e_blue − e_null), NOT adds −s·(e_blue − e_null): the difference is 2s·(e_blue − e_null)
    torch.testing.assert_close(e_and - e_not, 2 * 2.0 * (e_blue - e_null), atol=1e-5, rtol=0)
    assert (e_and - e_not).abs().max() > 1e-3


def test_v_prediction(sd_v, backend_v):
    pipe, _ = sd_v
    assert backend_v.prediction_type == "v_prediction"
    # one concept: diffusers' pipeline (guidance on v) vs compdiff (v -> eps once, guidance on eps)
    g = generators([7])
    expected = pipe("a red cat", guidance_scale=3.0, num_inference_steps=STEPS, generator=g[0],
                    output_type="latent").images
    eps_fn = compose(backend_v.denoiser, backend_v.encoder, "a red cat", guidance_scale=3.0)
    x_T = randn((1, *backend_v.latent_shape), generators([7]))
    torch.testing.assert_close(sample_with_scheduler(eps_fn, x_T, pipe.scheduler, STEPS), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(sample_ddim(eps_fn, x_T, backend_v.schedule, backend_v.timesteps(STEPS)), expected,
                               atol=1e-5, rtol=0)
    # K concepts: the looped reference composes the v outputs and steps a v-prediction DDIM
    eps_fn = compose(backend_v.denoiser, backend_v.encoder, EXPR, guidance_scale=2.5)
    x_T = randn((2, *backend_v.latent_shape), generators([8, 9]))
    ours = sample_ddim(eps_fn, x_T, backend_v.schedule, backend_v.timesteps(STEPS))
    torch.testing.assert_close(ours, _reference(pipe, _fresh(pipe.scheduler), TERMS, 2.5, x_T), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["DPMSolverMultistepScheduler", "EulerDiscreteScheduler"])
@pytest.mark.parametrize("which", ["eps", "v"])
def test_user_scheduler(kind, which, request):
    import diffusers

    pipe, _ = request.getfixturevalue("sd" if which == "eps" else "sd_v")
    backend = request.getfixturevalue("backend" if which == "eps" else "backend_v")
    # Euler's default "linspace" spacing asks the model at fractional timesteps
    user = getattr(diffusers, kind).from_config(pipe.scheduler.config, timestep_spacing="linspace")
    before = dict(user.config)
    eps_fn = compose(backend.denoiser, backend.encoder, EXPR, guidance_scale=2.5)
    x_T = randn((2, *backend.latent_shape), generators([1, 2]))
    infos = []
    ours = sample_with_scheduler(eps_fn, x_T, user, STEPS, callback=infos.append)
    assert [i.step for i in infos] == list(range(STEPS)) and torch.equal(infos[-1].x, ours)
    assert all(torch.isfinite(i.x0).all() for i in infos)  # DPM-Solver gives no x0: derived from eps
    assert user.num_inference_steps is None and dict(user.config) == before  # the caller's object is untouched
    expected = _reference(pipe, _fresh(user), TERMS, 2.5, x_T)
    # 1e-5 relative to the latents' scale: these updates grow the random eps model's latents to ~50,
    # where float32 round-off of batched vs per-concept UNet calls is ~3e-5 absolute (float64: 1e-13)
    assert (ours - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())


# ---- batching -------------------------------------------------------------------------------
@pytest.mark.parametrize("max_batch, calls_per_step", [(None, 1), (3, 3)])
def test_unet_called_once_per_step_with_all_rows(backend, max_batch, calls_per_step):
    rows = []
    handle = backend.unet.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        backend.sample_latents(EXPR, n=2, steps=STEPS, guidance_scale=2.0, max_batch=max_batch)
    finally:
        handle.remove()
    B, K = 2, 3
    assert len(rows) == STEPS * calls_per_step
    assert sum(rows) == STEPS * B * (K + 1)


def test_text_encoded_once_per_run(backend):
    calls = []
    handle = backend.text_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        backend.encoder._null = None
        backend.sample_latents(EXPR, n=2, steps=STEPS)
    finally:
        handle.remove()
    assert calls == [1, 3]  # the empty prompt, then the three concepts together


# ---- prompts, loading, decoding -----------------------------------------------------------------
def test_long_prompt_warns_and_truncates(backend):
    long_prompt = " ".join(["stone"] * 30)  # "st" + "o" + "n" + "e</w>": 4 tokens a word, 120 + 2 > 77
    n_tokens = len(backend.tokenizer(long_prompt).input_ids)
    with pytest.warns(PromptTruncatedWarning, match=rf"last {n_tokens - 77} tokens were dropped"):
        emb = backend.encoder.encode([long_prompt, "a cat"])
    assert emb.shape == (2, 77, 32)
    with pytest.warns(PromptTruncatedWarning, match="stone stone"):
        out = backend.sample_latents(f"{long_prompt} AND a cat", steps=2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("what", ["missing", "hub id", "not a pipeline"])
def test_no_local_model_is_a_clear_error(tmp_path, what):
    path = {"missing": str(tmp_path / "nowhere"), "hub id": "runwayml/stable-diffusion-v1-5",
            "not a pipeline": str(tmp_path)}[what]
    with pytest.raises(InputError, match="does not download models") as err:
        DiffusersBackend.from_pretrained(path)
    assert "save_pretrained" in str(err.value) and "snapshots" in str(err.value)
    if what == "hub id":
        assert "Hub id" in str(err.value)


def test_sdxl_is_refused_clearly(tmp_path):
    index = {"_class_name": "StableDiffusionXLPipeline",
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="SDXL"):
        DiffusersBackend.from_pretrained(tmp_path)


def test_directory_equals_pipeline_object(sd, backend):
    pipe, _ = sd
    from_obj = DiffusersBackend.from_pretrained(pipe)
    assert from_obj.latent_shape == backend.latent_shape == (4, 8, 8)
    assert from_obj.prediction_type == backend.prediction_type == "epsilon"
    assert torch.equal(from_obj.schedule.alphas_cumprod, backend.schedule.alphas_cumprod)
    prompts = ["a red cat", "the stone"]
    assert torch.equal(from_obj.encoder.encode(prompts), backend.encoder.encode(prompts))
    torch.testing.assert_close(backend.encoder.null(), _embed(pipe, ""), atol=0, rtol=0)
    a = from_obj.sample_latents(EXPR, n=2, steps=STEPS)
    b = backend.sample_latents(EXPR, n=2, steps=STEPS)
    assert torch.equal(a, b)


def test_decode_and_sizes(sd, backend):
    pipe, _ = sd
    latents = randn((2, *backend.latent_shape), generators([0, 1]))
    images = backend.decode(latents)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    with torch.no_grad():
        ref = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(images, ref, atol=1e-5, rtol=0)
    assert backend.latent_shape_for(32, 48) == (4, 16, 24)
    with pytest.raises(InputError, match="multiples of 2"):
        backend.latent_shape_for(33, 48)
    assert backend.generate("a red cat", n=1, steps=2, height=24, width=24).shape == (1, 3, 24, 24)


def test_network_guard_is_active():
    with pytest.raises(AssertionError, match="network access"):
        socket.create_connection(("huggingface.co", 443))


def test_cli_scheduler_option(sd, tmp_path):
    from compdiff.cli import main

    _, folder = sd
    out = tmp_path / "s.png"
    assert main(["sample", "--model", str(folder), "a red cat AND NOT blue", "--n", "2", "--steps", "2",
                 "--scheduler", "DPMSolverMultistepScheduler", "--no-progress", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["sample", "--task", "objects", '"0.3,0.3"', "--scheduler", "pipeline", "--steps", "2",
                 "--out", str(tmp_path / "t.png")]) == 2  # a world model has no diffusers scheduler
