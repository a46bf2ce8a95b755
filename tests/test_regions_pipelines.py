"""Regions on every diffusers family, with tiny random pipelines built by the tests (no downloads).

For SD 1.x, SDXL, SD3, Flux and PixArt-Σ: a region confines its concept's delta to its mask (the
output equals the null prediction of the same forward, exactly, outside it when the feather is 0),
a full-image region equals no region, and a batch with per-sample masks equals each sample alone.
Each backend's one-call ``sample_latents`` takes regions, and OR (one clause per image, by its seed).
"""
import pytest
import torch

import compdiff as cd
from compdiff.compose import compose

pytest.importorskip("transformers")

FAMILIES = ["stable-diffusion", "sdxl", "sd3", "flux", "pixart"]


def _save(family, folder):
    if family == "stable-diffusion":
        import sd_tiny
        return sd_tiny.save_pipeline(folder)
    if family == "sdxl":
        import sdxl_tiny
        return sdxl_tiny.save_pipeline(folder)
    if family == "pixart":
        import pixart_tiny
        return pixart_tiny.save_pixart(folder)
    import flow_tiny
    return flow_tiny.save_sd3(folder) if family == "sd3" else flow_tiny.save_flux(folder)


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / "pipe"
    _save(request.param, folder)
    m = cd.open_model(folder)
    assert m.family == request.param
    return m, folder


class Recording:
    """The model's denoiser, keeping the output of its last call (null rows first)."""

    def __init__(self, denoiser):
        self.denoiser, self.last = denoiser, None

    def __call__(self, x, t, cond):
        self.last = self.denoiser(x, t, cond)
        return self.last


def _inputs(m, batch=2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *m.latent_shape, generator=g)
    spacing = "linspace" if m.schedule.prediction == "velocity" else "trailing"
    t = m.schedule.timesteps(4, spacing)[1]
    return x, torch.as_tensor(t).expand(batch)


def test_a_region_confines_its_delta_exactly(model):
    m, _ = model
    x, t = _inputs(m)
    den = Recording(m.denoiser)
    out = compose(den, m.encoder, '"a red cube" @ left AND NOT "blurry":0.5 @ (0.5, 0.5, 1, 1)',
                  guidance_scale=4.0)(x, t)
    null = den.last[:x.shape[0]]
    w = x.shape[-1]
    assert torch.equal(out[..., :w // 2, w // 2:], null[..., :w // 2, w // 2:])  # top right: in neither region
    assert not torch.equal(out[..., : w // 2], null[..., : w // 2])  # the left half is guided


def test_a_full_image_region_equals_no_region(model):
    m, _ = model
    x, t = _inputs(m)
    plain = compose(m.denoiser, m.encoder, '"a red cube" AND NOT "blurry"', guidance_scale=4.0)(x, t)
    full = compose(m.denoiser, m.encoder, '"a red cube" @ (0, 0, 1, 1) AND NOT "blurry" @ (0, 0, 1, 1)',
                   guidance_scale=4.0)(x, t)
    assert torch.allclose(full, plain, atol=1e-6, rtol=1e-6)


def test_per_sample_masks_batched_equal_each_sample_alone(model):
    m, _ = model
    x, t = _inputs(m)
    h, w = m.latent_shape[-2:]
    masks = torch.zeros(2, h, w)
    masks[0, :, : w // 2] = 1
    masks[1, h // 2:, :] = 1
    expr = '"a red cube" @ mask:m AND "a blue sphere"'
    both = compose(m.denoiser, m.encoder, expr, guidance_scale=4.0, masks={"m": masks})(x, t)
    for b in range(2):
        one = compose(m.denoiser, m.encoder, expr, guidance_scale=4.0, masks={"m": masks[b]})(x[b:b + 1], t[b:b + 1])
        assert torch.allclose(both[b:b + 1], one, atol=1e-5, rtol=1e-5)


def test_the_cli_samples_regions_on_every_family(model, tmp_path, capsys):
    from compdiff.cli import main

    _, folder = model
    out = tmp_path / "grid.png"
    rc = main(["sample", '"a cat" @ left AND "a dog" @ right AND NOT "blurry"', "--model", str(folder), "--n", "2",
               "--steps", "2", "--feather", "0.1", "--out", str(out), "--no-progress"])
    assert rc == 0 and out.exists()
    assert "a cat  @ left" in capsys.readouterr().out


def _backend(m, folder):
    """The family's backend class (the one-call ``sample_latents`` API) opened on the same folder."""
    from compdiff.backends.diffusers import DiffusersBackend
    from compdiff.backends.flux import FluxBackend
    from compdiff.backends.pixart import PixArtBackend
    from compdiff.backends.sd3 import SD3Backend
    from compdiff.backends.sdxl import SDXLBackend

    cls = {"stable-diffusion": DiffusersBackend, "sdxl": SDXLBackend, "sd3": SD3Backend, "flux": FluxBackend,
           "pixart": PixArtBackend}[m.family]
    return cls.from_pretrained(folder)


def test_the_backends_one_call_sampling_takes_regions(model):
    m, folder = model
    backend = _backend(m, folder)
    h, w = m.latent_shape[-2:]
    mask = torch.zeros(h, w)
    mask[:, : w // 2] = 1
    kw = dict(n=1, steps=2, seeds=[3])
    plain = backend.sample_latents('"a red cube" AND "a dog"', **kw)
    full = backend.sample_latents('"a red cube" @ (0, 0, 1, 1) AND "a dog"', **kw)
    named = backend.sample_latents('"a red cube" @ left AND "a dog"', **kw)
    masked = backend.sample_latents('"a red cube" @ mask:m AND "a dog"', masks={"m": mask}, **kw)
    assert torch.allclose(full, plain, atol=1e-5) and not torch.allclose(named, plain, atol=1e-5)
    assert torch.allclose(masked, named, atol=1e-6)  # the mask of the left half is the region left
    soft = backend.sample_latents('"a red cube" @ left AND "a dog"', feather=0.25, region_mode="normalize", **kw)
    assert soft.shape == plain.shape and not torch.allclose(soft, named, atol=1e-6)


def test_the_backends_one_call_sampling_takes_or(model):
    """OR through every family's ``sample_latents``: each image draws its clause from its own seed
    (SD and SDXL once refused OR here with "choose each sample's clause first")."""
    m, folder = model
    backend = _backend(m, folder)
    kw = dict(steps=2)
    pair = backend.sample_latents('"a red cube" OR "a dog":3', n=2, seeds=[3, 4], **kw)
    alone = backend.sample_latents('"a red cube" OR "a dog":3', n=1, seeds=[4], **kw)
    # image i depends only on seeds[i], its clause included (batch size changes float rounding only)
    assert torch.allclose(pair[1], alone[0], rtol=1e-4, atol=1e-4)
    both = backend.sample_latents('"a red cube" AND "a dog"', n=2, seeds=[3, 4], **kw)
    assert not torch.allclose(pair, both, atol=1e-4)
