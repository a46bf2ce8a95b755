"""compdiff.backends.sdxl on tiny random SDXL pipelines (built here by sdxl_tiny, no downloads).

The independent references are diffusers itself: StableDiffusionXLPipeline.__call__ for one
concept (classifier-free guidance), its encode_prompt / _get_add_time_ids for the conditions,
and, for K concepts, a loop written here that calls the UNet once per concept and per sample
and applies the composition formula, stepping a diffusers scheduler. Every test in this
module fails on any attempt to open a network connection.
"""
import copy
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import sdxl_tiny  # noqa: E402

import compdiff as cd  # noqa: E402
from compdiff import compose, generators, randn  # noqa: E402
from compdiff.backends import PromptTruncatedWarning, sample_with_scheduler  # noqa: E402
from compdiff.backends.sdxl import SDXLBackend, add_time_ids  # noqa: E402
from compdiff.cli import main  # noqa: E402
from compdiff.errors import InputError  # noqa: E402

STEPS = 3
EXPR = 'a red cat AND "the stone" :0.5 AND NOT blue'
TERMS = [("a red cat", 1.0), ("the stone", 0.5), ("blue", -1.0)]


pytestmark = pytest.mark.usefixtures("no_network")  # tests/conftest.py: any socket connect fails


@pytest.fixture(scope="module")
def xl(tmp_path_factory, no_network):
    """(pipeline, folder): eps prediction, EulerDiscreteScheduler, force_zeros_for_empty_prompt=True (SDXL base)."""
    folder = tmp_path_factory.mktemp("sdxl") / "pipe"
    return sdxl_tiny.save_pipeline(folder), folder


@pytest.fixture(scope="module")
def xl_v(tmp_path_factory, no_network):
    """(pipeline, folder): v prediction, DDIM, force_zeros_for_empty_prompt=False (null = the empty prompt)."""
    folder = tmp_path_factory.mktemp("sdxlv") / "pipe"
    return sdxl_tiny.save_pipeline(folder, prediction_type="v_prediction", seed=1, scheduler="ddim",
                                   force_zeros_for_empty_prompt=False), folder


@pytest.fixture(scope="module")
def backend(xl):
    return SDXLBackend.from_pretrained(xl[1])


@pytest.fixture(scope="module")
def backend_v(xl_v):
    return SDXLBackend.from_pretrained(xl_v[1])


def _fresh(scheduler):
    return type(scheduler).from_config(scheduler.config)


# ---- conditions -----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["zeros", "empty prompt"])
def test_conditions_are_diffusers_own(which, request):
    pipe, _ = request.getfixturevalue("xl" if which == "zeros" else "xl_v")
    b = request.getfixturevalue("backend" if which == "zeros" else "backend_v")
    assert b.force_zeros_for_empty_prompt == (which == "zeros")
    prompts = ["a red cat", "the stone"]
    cond = b.encoder.encode(prompts)
    assert list(cond) == ["tokens", "pooled", "time_ids"]
    assert cond["tokens"].shape == (2, 77, sdxl_tiny.HIDDEN_1 + sdxl_tiny.HIDDEN_2)
    assert cond["pooled"].shape == (2, sdxl_tiny.PROJECTION) and cond["time_ids"].shape == (2, 6)
    with torch.no_grad():
        tokens, neg_tokens, pooled, neg_pooled = pipe.encode_prompt(prompts, device="cpu")
        ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), dtype=tokens.dtype,
                                     text_encoder_projection_dim=sdxl_tiny.PROJECTION)
    torch.testing.assert_close(cond["tokens"], tokens, atol=1e-6, rtol=0)
    torch.testing.assert_close(cond["pooled"], pooled, atol=1e-6, rtol=0)
    assert torch.equal(cond["time_ids"], ids.expand(2, -1))
    null = b.encoder.null()
    assert {k: v.shape[0] for k, v in null.items()} == {"tokens": 1, "pooled": 1, "time_ids": 1}
    torch.testing.assert_close(null["tokens"], neg_tokens[:1], atol=1e-6, rtol=0)
    torch.testing.assert_close(null["pooled"], neg_pooled[:1], atol=1e-6, rtol=0)
    assert torch.equal(null["time_ids"], ids)  # the null row describes the same image
    if which == "zeros":
        assert not null["tokens"].any() and not null["pooled"].any()
    else:
        assert null["tokens"].abs().max() > 0.1


def test_add_time_ids():
    assert add_time_ids(1024, 768) == (1024, 768, 0, 0, 1024, 768)
    assert add_time_ids(1024, 1024, original_size=(512, 512), crops_coords_top_left=(3, 4)) == (
        512, 512, 3, 4, 1024, 1024)


# ---- equivalence with diffusers ---------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2])
def test_one_concept_equals_sdxl_pipeline(xl, backend, n):
    pipe, _ = xl
    seeds = list(range(10, 10 + n))
    expected = pipe("a red cat", guidance_scale=5.0, num_inference_steps=STEPS, num_images_per_prompt=n,
                    generator=generators(seeds) if n > 1 else generators(seeds)[0], output_type="latent").images
    # the convenience call with the pipeline's own scheduler (EulerDiscreteScheduler)
    ours = backend.sample_latents("a red cat", n=n, steps=STEPS, guidance_scale=5.0, seeds=seeds,
                                  scheduler=pipe.scheduler)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    # the same pieces by hand: guidance scale s on one concept is compose with weight 1 at scale s
    eps_fn = compose(backend.denoiser, backend.encoder, "a red cat", guidance_scale=5.0)
    x_T = randn((n, *backend.latent_shape), generators(seeds))
    torch.testing.assert_close(sample_with_scheduler(eps_fn, x_T, pipe.scheduler, STEPS), expected, atol=1e-4, rtol=0)


def test_v_prediction_and_empty_prompt_null_equal_the_pipeline(xl_v, backend_v):
    pipe, _ = xl_v
    assert backend_v.prediction_type == "v_prediction"
    expected = pipe("a red cat", guidance_scale=4.0, num_inference_steps=STEPS, generator=generators([7])[0],
                    output_type="latent").images
    ours = backend_v.sample_latents("a red cat", n=1, steps=STEPS, guidance_scale=4.0, seeds=[7],
                                    scheduler=pipe.scheduler)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    # compdiff's own DDIM, timesteps spaced as the scheduler config says ("leading" + steps_offset; the
    # library's default is "trailing"): the same latents
    ddim = backend_v.sample_latents("a red cat", n=1, steps=STEPS, guidance_scale=4.0, seeds=[7], spacing="leading")
    torch.testing.assert_close(ddim, expected, atol=1e-4, rtol=0)


def test_other_size_equals_the_pipeline(xl, backend):
    pipe, _ = xl
    expected = pipe("a red cat", guidance_scale=5.0, num_inference_steps=STEPS, height=24, width=32,
                    generator=generators([3])[0], output_type="latent").images
    seen = []
    handle = backend.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    try:
        ours = backend.sample_latents("a red cat", n=1, steps=STEPS, guidance_scale=5.0, seeds=[3], height=24,
                                      width=32, scheduler=pipe.scheduler)
    finally:
        handle.remove()
    assert ours.shape == (1, 4, 12, 16)
    assert all(torch.equal(ids, torch.tensor([[24.0, 32, 0, 0, 24, 32]] * 2)) for ids in seen)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    assert backend.encoder.time_ids == (16, 16, 0, 0, 16, 16)  # the backend's own encoder is untouched


# ---- the looped reference --------------------------------------------------------------------------
@torch.no_grad()
def _reference(pipe, scheduler, terms, scale, x_T, steps=STEPS):
    """One UNet call per concept and one for the null condition, per sample, combined in the MODEL's own
    parametrisation (eps or v, as diffusers' pipeline does CFG), stepped with ``scheduler``:
    out = out(∅) + Σ_i s·w_i·(out(c_i) − out(∅)). Conditions from diffusers' encode_prompt."""
    h, w = x_T.shape[2] * pipe.vae_scale_factor, x_T.shape[3] * pipe.vae_scale_factor
    embs = []
    for concept, weight in terms:
        tokens, neg_tokens, pooled, neg_pooled = pipe.encode_prompt(concept, device="cpu")
        embs.append((tokens, pooled, weight))
    ids = pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=tokens.dtype,
                                 text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)

    def unet(x, t, tok, pool):
        return pipe.unet(x, t, encoder_hidden_states=tok, added_cond_kwargs={"text_embeds": pool, "time_ids": ids},
                         return_dict=False)[0]

    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        rows = []
        for b in range(x.shape[0]):
            xb = x_in[b:b + 1]
            o_null = unet(xb, t, neg_tokens, neg_pooled)
            o = o_null.clone()
            for tok, pool, weight in embs:
                o = o + scale * weight * (unet(xb, t, tok, pool) - o_null)
            rows.append(o)
        x = scheduler.step(torch.cat(rows), t, x).prev_sample
    return x


@pytest.mark.parametrize("which", ["eps euler", "v ddim"])
def test_k_concepts_equal_looped_reference(which, request):
    pipe, _ = request.getfixturevalue("xl" if which == "eps euler" else "xl_v")
    b = request.getfixturevalue("backend" if which == "eps euler" else "backend_v")
    eps_fn = compose(b.denoiser, b.encoder, EXPR, guidance_scale=2.5)
    x_T = randn((2, *b.latent_shape), generators([3, 4]))
    ours = sample_with_scheduler(eps_fn, x_T, pipe.scheduler, STEPS)
    expected = _reference(pipe, _fresh(pipe.scheduler), TERMS, 2.5, x_T)
    # float32: one call of B·(K+1) rows against (K+1)·B calls of one row sums in another order, on latents
    # of size ~10 (Euler starts at sigma_max·x_T); a difference in the rule itself is orders larger
    assert (ours - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())


# ---- batching and seeds ------------------------------------------------------------------------------
def test_k_concepts_cost_one_unet_call_per_step(backend):
    calls, text_calls = [], []
    h1 = backend.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    h2 = backend.text_encoder.register_forward_hook(lambda module, args, out: text_calls.append(args[0].shape[0]))
    try:
        backend.sample_latents(EXPR, n=2, steps=STEPS, guidance_scale=2.0)
    finally:
        h1.remove()
        h2.remove()
    B, K = 2, 3
    assert calls == [B * (K + 1)] * STEPS  # every concept and the null, every sample: ONE call a step
    assert text_calls == [K]  # the concepts encoded once, together; the zeros null runs no encoder


def test_image_i_depends_only_on_seed_i(backend):
    together = backend.sample_latents(EXPR, n=3, steps=STEPS, guidance_scale=2.0, seeds=[5, 6, 7])
    for i, seed in enumerate([5, 6, 7]):
        alone = backend.sample_latents(EXPR, n=1, steps=STEPS, guidance_scale=2.0, seeds=[seed])
        # float32 round-off of other kernels for another batch size, bounded by the tensor's scale (issue 31): measured
        # 0 on an AMD EPYC (oneDNN uncapped, AVX2, SSE41; MKL+ATen capped too), 5.2e-5 = 0.66·ε·max|x| on an Intel Xeon
        # with AMX (PixArt); 16·ε·max|x| (ε = 2^-23) is 24x that; a wrong seed or sign differs by ~0.1-1·max|x|
        torch.testing.assert_close(together[i:i + 1], alone, atol=16 * 2**-23 * float(alone.abs().max()), rtol=0)
    assert not torch.allclose(together[0], together[1])


def test_pipeline_object_equals_folder(xl, backend):
    pipe, _ = xl
    from_obj = SDXLBackend.from_pretrained(pipe)
    assert from_obj.latent_shape == backend.latent_shape == (4, 8, 8)
    assert from_obj.force_zeros_for_empty_prompt and from_obj.encoder.time_ids == backend.encoder.time_ids
    a = from_obj.sample_latents(EXPR, n=2, steps=STEPS)
    b = backend.sample_latents(EXPR, n=2, steps=STEPS)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_long_prompt_warns_and_truncates(backend):
    long_prompt = " ".join(["stone"] * 30)  # 4 tokens a word: 120 + 2 > 77
    with pytest.warns(PromptTruncatedWarning, match="tokens were dropped"):
        cond = backend.encoder.encode([long_prompt, "a cat"])
    assert cond["tokens"].shape[:2] == (2, 77)


# ---- decoding --------------------------------------------------------------------------------------
def test_decode_uses_sdxl_scaling(xl, backend):
    pipe, _ = xl
    latents = randn((2, *backend.latent_shape), generators([0, 1]))
    images = backend.decode(latents)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    with torch.no_grad():
        ref = pipe.vae.decode(latents / sdxl_tiny.SCALING_FACTOR).sample.clamp(-1, 1)
    torch.testing.assert_close(images, ref, atol=1e-5, rtol=0)
    assert backend.generate("a red cat", n=1, steps=2, height=24, width=24).shape == (1, 3, 24, 24)


def test_force_upcast_decodes_a_float16_vae_in_float32(xl):
    b = SDXLBackend.from_pretrained(xl[1])
    b.vae.to(torch.float16)
    reference = copy.deepcopy(b.vae).float()  # the same (float16-rounded) weights, in float32
    seen = []
    handle = b.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    latents = randn((1, *b.latent_shape), generators([2]))
    try:
        images = b.decode(latents)
    finally:
        handle.remove()
    assert seen == [torch.float32] and next(b.vae.parameters()).dtype == torch.float16  # put back afterwards
    with torch.no_grad():
        ref = reference.decode(latents / sdxl_tiny.SCALING_FACTOR).sample.clamp(-1, 1)
    torch.testing.assert_close(images, ref, atol=1e-6, rtol=0)


# ---- the registry, the CLI and what is refused ------------------------------------------------------------
def test_open_model_detects_the_sdxl_family(xl):
    _, folder = xl
    m = cd.open_model(folder)
    assert m.family == "sdxl" and m.default_scale == 5.0 and m.clip_x0 is None and m.task is None
    assert m.latent_shape == (4, 8, 8) and m.sampling == {}
    assert m.info["force_zeros_for_empty_prompt"] is True and (m.info["height"], m.info["width"]) == (16, 16)


def test_cli_sample_writes_two_images(xl, tmp_path, capsys):
    from PIL import Image

    _, folder = xl
    png = tmp_path / "grid.png"
    rc = main(["sample", "--model", str(folder), "A AND NOT B", "--n", "2", "--steps", "2", "--out", str(png),
               "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "(sdxl, cpu)" in out.out and "wrote" in out.out
    # two 16x16 images, upscaled 8x to 128 px, side by side with 2 px borders
    assert Image.open(png).size == (2 * (128 + 2) + 2, 128 + 2 + 2)


@pytest.mark.parametrize("kind, pattern", [
    ("refiner", r"StableDiffusionXLImg2ImgPipeline.*refiner"),
    ("inpainting", r"StableDiffusionXLInpaintPipeline.*inpainting"),
    ("img2img", r"StableDiffusionXLImg2ImgPipeline.*image-to-image"),
    ("controlnet", r"StableDiffusionXLControlNetPipeline.*ControlNet"),
    ("ip-adapter", r"StableDiffusionXLPipeline.*IP-Adapter"),
])
def test_unsupported_layouts_are_refused_naming_the_class(xl, tmp_path, kind, pattern):
    _, folder = xl
    dst = tmp_path / kind
    if kind == "refiner":
        sdxl_tiny.refiner_like(folder, dst)
    elif kind == "inpainting":
        sdxl_tiny.inpainting_like(folder, dst)
    else:
        shutil.copytree(folder, dst)
        changes = {"img2img": {"_class_name": "StableDiffusionXLImg2ImgPipeline"},
                   "controlnet": {"_class_name": "StableDiffusionXLControlNetPipeline",
                                  "controlnet": ["diffusers", "ControlNetModel"]},
                   "ip-adapter": {"image_encoder": ["transformers", "CLIPVisionModelWithProjection"]}}[kind]
        sdxl_tiny.edit_index(dst, **changes)
    with pytest.raises(InputError, match=pattern):
        cd.open_model(dst)
    with pytest.raises(InputError, match=pattern):
        SDXLBackend.from_pretrained(dst)


def test_refiner_pipeline_object_is_refused(xl):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe, _ = xl
    parts = {k: v for k, v in pipe.components.items() if k not in ("text_encoder", "tokenizer")}
    refiner = StableDiffusionXLImg2ImgPipeline(text_encoder=None, tokenizer=None, requires_aesthetics_score=True,
                                               add_watermarker=False, **parts)
    with pytest.raises(InputError, match="StableDiffusionXLImg2ImgPipeline.*refiner"):
        SDXLBackend.from_pretrained(refiner)


def test_pickled_weights_are_refused_without_unpickling(xl, tmp_path, monkeypatch):
    _, folder = xl
    dst = tmp_path / "pickled"
    shutil.copytree(folder, dst)
    (dst / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (dst / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not to be unpickled")

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load called")
    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(InputError, match="pickled weights"):
        cd.open_model(dst)


def test_not_a_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not download models"):
        SDXLBackend.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(InputError, match="Hub id"):
        SDXLBackend.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")


def test_the_sd_family_leaves_sdxl_alone(xl, tmp_path):
    from compdiff.backends.registry import detect_family

    _, folder = xl
    assert detect_family(folder) == "sdxl"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert detect_family(tmp_path) == "stable-diffusion"


def test_network_guard_is_active():
    with pytest.raises(AssertionError, match="network access"):
        socket.create_connection(("huggingface.co", 443))
