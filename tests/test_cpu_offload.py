"""Model CPU offload (``cpu_offload=True``, ``compdiff sample --cpu-offload``; compdiff.backends.offload).

The machine running the tests has no GPU, so the hooks run with the CPU as their execution device:
accelerate's moves are then no-ops, but the hooks are installed, chained and called exactly as on a
GPU. Checked here: every module carries a CpuOffload hook, chained text encoders -> denoiser -> VAE
(the first text encoder also sending the denoiser back); every module's forward (and the VAE's
decode) goes through its hook; sampled latents and decoded images equal those of the same model
without offload, bit for bit, on tiny SD, SD3 and Flux pipelines, chunked (max_batch) or not; the
backends' devices are the hooks' execution device, not the device of the (CPU-resident) weights;
the CLI refuses --cpu-offload without a GPU (exit 2), and world models refuse cpu_offload.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import flow_tiny  # noqa: E402
import sd_tiny  # noqa: E402

import compdiff  # noqa: E402
from compdiff.backends import DiffusersBackend, open_model  # noqa: E402
from compdiff.backends.flux import FluxBackend  # noqa: E402
from compdiff.backends.offload import execution_device, offload_hook  # noqa: E402
from compdiff.backends.sd3 import SD3Backend  # noqa: E402
from compdiff.cli import main  # noqa: E402
from compdiff.errors import InputError  # noqa: E402

EXPR = 'a red cat AND "the stone" :0.5 AND NOT blue'
L = flow_tiny.T5_LENGTH

pytestmark = pytest.mark.usefixtures("no_network")  # tests/conftest.py: any socket connect fails


@pytest.fixture(scope="module")
def folders(tmp_path_factory, no_network):
    """family -> a saved tiny pipeline folder."""
    root = tmp_path_factory.mktemp("offload")
    sd_tiny.save_pipeline(root / "sd")
    flow_tiny.save_sd3(root / "sd3")
    flow_tiny.save_flux(root / "flux")
    return {"sd": root / "sd", "sd3": root / "sd3", "flux": root / "flux"}


def _open(family: str, folder: Path, cpu_offload: bool):
    if family == "sd":
        return DiffusersBackend.from_pretrained(folder, cpu_offload=cpu_offload)
    cls = SD3Backend if family == "sd3" else FluxBackend
    return cls.from_pretrained(folder, max_sequence_length=L, cpu_offload=cpu_offload)


def _chain(backend) -> list[torch.nn.Module]:
    """The modules in the order the hooks chain them."""
    if isinstance(backend, DiffusersBackend):
        return [backend.text_encoder, backend.unet, backend.vae]
    if isinstance(backend, SD3Backend):
        return [backend.text_encoder, backend.text_encoder_2, backend.text_encoder_3, backend.transformer,
                backend.vae]
    return [backend.text_encoder, backend.text_encoder_2, backend.transformer, backend.vae]


@pytest.mark.parametrize("family", ["sd", "sd3", "flux"])
def test_hooks_are_installed_and_chained(folders, family):
    from accelerate.hooks import CpuOffload

    backend = _open(family, folders[family], cpu_offload=True)
    modules = _chain(backend)
    hooks = [offload_hook(m) for m in modules]
    assert all(isinstance(h, CpuOffload) for h in hooks)
    assert all(h.execution_device == torch.device("cpu") for h in hooks)
    assert [u.model for u in backend.offload_hooks] == modules
    # each hook offloads the module before it; the first one offloads the denoiser (composing again after sampling)
    denoiser = modules[-2]
    assert hooks[0].prev_module_hook.model is denoiser
    for i in range(1, len(modules)):
        assert hooks[i].prev_module_hook is backend.offload_hooks[i - 1]
    assert all(next(m.parameters()).device.type == "cpu" for m in modules)


def test_without_offload_there_are_no_hooks(folders):
    backend = _open("sd", folders["sd"], cpu_offload=False)
    assert backend.offload_hooks == []
    assert all(offload_hook(m) is None for m in _chain(backend))


@pytest.mark.parametrize("family,max_batch", [("sd", None), ("sd", 2), ("sd3", None), ("flux", 1)])
def test_offloaded_outputs_equal_and_every_module_goes_through_its_hook(folders, family, max_batch, monkeypatch):
    from accelerate.hooks import CpuOffload

    reference = _open(family, folders[family], cpu_offload=False)
    kwargs = {"n": 2, "steps": 3, "seeds": [3, 4], "max_batch": max_batch}
    want = reference.sample_latents(EXPR, **kwargs)
    want_images = reference.decode(want)

    backend = _open(family, folders[family], cpu_offload=True)
    ran = []
    original = CpuOffload.pre_forward

    def spy(self, module, *args, **kw):
        ran.append(module)
        return original(self, module, *args, **kw)

    monkeypatch.setattr(CpuOffload, "pre_forward", spy)
    got = backend.sample_latents(EXPR, **kwargs)
    images = backend.decode(got)
    assert torch.equal(got, want)
    assert torch.equal(images, want_images)
    modules = _chain(backend)
    assert all(any(r is m for r in ran) for m in modules)  # text encoders, denoiser, VAE (decode) all hooked
    calls = sum(r is modules[-2] for r in ran)
    rows = 2 * 4  # B·(K + 1) rows per step
    assert calls == 3 * (1 if max_batch is None else -(-rows // max_batch))


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_open_model_with_cpu_offload(folders, family):
    m = open_model(folders[family], cpu_offload=True)
    module = m.denoiser.unet if family == "sd" else m.denoiser.transformer
    assert offload_hook(module) is not None
    fn = compdiff.compose(m.denoiser, m.encoder, EXPR, guidance_scale=m.default_scale, max_batch=2)
    x = compdiff.randn((1, *m.latent_shape), compdiff.generators([0]))
    out = fn(x, m.schedule.t_batch(m.schedule.run(3)[1], 1, "cpu"))
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("family", ["sd", "sd3", "flux"])
def test_devices_are_the_execution_device_not_the_weights(folders, family):
    """With the weights on the CPU and the hooks' execution device elsewhere (set by hand here: nothing
    runs), every device the backend reports is the execution device."""
    backend = _open(family, folders[family], cpu_offload=True)
    elsewhere = torch.device("cuda", 0)
    for module in _chain(backend):
        offload_hook(module).execution_device = elsewhere
    assert all(next(m.parameters()).device.type == "cpu" for m in _chain(backend))
    assert backend.device == elsewhere
    assert all(execution_device(m) == elsewhere for m in _chain(backend))


def test_sdxl_encoder_reads_the_execution_device(tmp_path):
    """SDXL's zero null condition is built on text_encoder_2's device: with offload, its execution device."""
    import sdxl_tiny

    from compdiff.backends.sdxl import SDXLBackend

    backend = SDXLBackend.from_pretrained(sdxl_tiny.build_pipeline(tmp_path), cpu_offload=True)
    assert backend.encoder._out_dtype_device[1] == torch.device("cpu")
    offload_hook(backend.text_encoder_2).execution_device = torch.device("cuda", 0)
    assert backend.encoder._out_dtype_device[1] == torch.device("cuda", 0)


def test_sdxl_float16_vae_upcast_under_offload(tmp_path):
    """SDXL's float16 VAE decodes in float32 (force_upcast) and is put back: the same under offload, and the
    VAE keeps its hook and its float16 weights afterwards."""
    import sdxl_tiny

    from compdiff.backends.sdxl import SDXLBackend

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images = []
    for offload in (False, True):
        backend = SDXLBackend.from_pretrained(sdxl_tiny.build_pipeline(tmp_path / str(offload)), dtype=torch.float16,
                                              cpu_offload=offload)
        images.append(backend.decode(latents))
        assert next(backend.vae.parameters()).dtype == torch.float16
        assert (offload_hook(backend.vae) is not None) == offload
    assert torch.equal(images[0], images[1])


def test_world_models_refuse_cpu_offload():
    with pytest.raises(InputError, match="cpu_offload applies to diffusers pipelines"):
        open_model("objects", cpu_offload=True)


def test_a_family_without_the_option_refuses_it(folders, monkeypatch):
    from compdiff.backends import registry

    backend = registry.BACKENDS["stable-diffusion"]
    plain = registry.Backend(backend.family, backend.detect,
                             lambda path, *, device, dtype="auto", bf16=False: backend.open(path, device=device))
    monkeypatch.setitem(registry.BACKENDS, "stable-diffusion", plain)
    with pytest.raises(InputError, match="does not support cpu_offload"):
        open_model(folders["sd"], cpu_offload=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
@pytest.mark.parametrize("device,why", [("auto", "torch sees no CUDA GPU here"), ("cpu", "--device cpu")])
def test_cli_cpu_offload_needs_a_gpu(folders, tmp_path, capsys, device, why):
    out = tmp_path / "x.png"
    rc = main(["sample", "a red cat AND NOT blue", "--model", str(folders["sd"]), "--cpu-offload", "--device", device,
               "--steps", "2", "--n", "1", "--out", str(out), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("compdiff: error: --cpu-offload needs a GPU (an accelerator device)")
    assert why in first
    assert not out.exists()
