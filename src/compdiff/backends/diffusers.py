"""Stable Diffusion (1.x / 2.x and kin) from a local diffusers pipeline, as compdiff's
Denoiser + ConceptEncoder + NoiseSchedule + VAE decoder.

    backend = DiffusersBackend.from_pretrained("/models/sd15")       # or a pipeline object
    eps_fn = compdiff.compose(backend.denoiser, backend.encoder,
                              'a stone castle AND NOT "black and white"', guidance_scale=7.5)
    x_T = compdiff.randn((4, *backend.latent_shape), compdiff.generators([0, 1, 2, 3]))
    latents = compdiff.sample_ddim(eps_fn, x_T, backend.schedule, backend.timesteps(30))
    # or, with any diffusers scheduler: sample_with_scheduler(eps_fn, x_T, DPMSolverMultistepScheduler(...), 30)
    images = backend.decode(latents)                                   # (4, 3, H, W) in [-1, 1]

Every concept of a step and the empty prompt go through the UNet in ONE call of B·(K+1)
rows (that is compose's job; nothing here loops over concepts). compdiff never downloads:
a path that is not a local pipeline directory is an InputError saying so. SDXL, SD3 and Flux
folders are opened by their own families (sdxl.py, sd3.py, flux.py); this one says so.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from compdiff.backends.one_call import sample_vp, seed_list
from compdiff.backends.offload import RunsOnDenoiser, enable_model_cpu_offload, execution_device, release
from compdiff.backends.registry import OpenedModel, register_backend
from compdiff.backends.scheduler_loop import sample_with_scheduler
from compdiff.backends.sd_text import CLIPPromptEncoder
from compdiff.compose import Mode, compose
from compdiff.regions import Masks, RegionMode
from compdiff.errors import InputError
from compdiff.expr import Expr
from compdiff.sampling import Callback
from compdiff.schedule import NoiseSchedule

REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PIPELINE_SCALE = 7.5  # diffusers' default guidance scale for Stable Diffusion
SDXL_MESSAGE = ("this is an SDXL pipeline (two text encoders, pooled text embeddings and added time ids): "
                "open it with compdiff.open_model(folder) or compdiff.backends.SDXLBackend, the 'sdxl' family")


class UNetDenoiser:
    """Denoiser over a ``UNet2DConditionModel``.

    ``(x (B, C, h, w) latents, t (B,) timesteps, cond (B, L, D) text embeddings) -> eps (B, C, h, w)``
    in x's dtype. The UNet runs in its own dtype, on its execution device (where its offload hook
    runs it under cpu_offload); a v- or x0-prediction output is converted to eps here, once, by
    ``schedule.eps_from_prediction``.
    """

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule, prediction_type: str) -> None:
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type

    def _unet_kwargs(self, cond: Tensor, device: torch.device, dtype: torch.dtype) -> dict:
        """The UNet's conditioning keyword arguments (SDXL's subclass adds the pooled embeddings and time ids)."""
        return {"encoder_hidden_states": cond.to(device, dtype)}

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        device, dtype = execution_device(self.unet), next(self.unet.parameters()).dtype
        out = self.unet(x.to(device, dtype), t.to(device), **self._unet_kwargs(cond, device, dtype),
                        return_dict=False)[0].to(x.device, x.dtype)
        if self.prediction_type == "epsilon":
            return out
        # a fractional t (Euler schedulers with "linspace" spacing) is interpolated by the schedule
        return self.schedule.eps_from_prediction(x, out, t.detach().cpu().double(), self.prediction_type)


@torch.no_grad()
def vae_decode(vae: torch.nn.Module, latents: Tensor, batch_size: int = 1) -> Tensor:
    """latents (N, C, h, w) -> images (N, 3, H, W), float32 on the CPU, in [-1, 1], as the SD, SD3, Flux and
    PixArt pipelines decode: z = latents / scaling_factor (+ shift_factor where the VAE has one), then the
    VAE, batch_size images at a time (decoding at full resolution is memory hungry). An offloaded VAE
    (cpu_offload) runs on its execution device and goes back to the CPU afterwards."""
    cfg = vae.config
    z = latents.to(execution_device(vae), next(vae.parameters()).dtype) / cfg.scaling_factor
    if getattr(cfg, "shift_factor", None) is not None:
        z = z + cfg.shift_factor
    try:
        images = [vae.decode(z[i:i + batch_size], return_dict=False)[0].float().cpu()
                  for i in range(0, z.shape[0], batch_size)]
    finally:
        release(vae)
    return torch.cat(images).clamp(-1, 1)


def _missing_model_message(path: str) -> str:
    msg = (f"no diffusers pipeline at {path!r} (a local folder with model_index.json is needed): compdiff "
           "does not download models and never reaches the network. Point it at a local copy: a folder "
           "written by `pipeline.save_pretrained(folder)`, or a snapshot already in the Hugging Face cache, "
           "~/.cache/huggingface/hub/models--<org>--<name>/snapshots/<hash>")
    p = Path(path).expanduser()
    snapshots = sorted(p.glob("snapshots/*/model_index.json")) if p.is_dir() else []
    if snapshots:
        msg += f". This looks like a cache folder; try {str(snapshots[-1].parent)!r}"
    elif not p.exists() and path.count("/") == 1 and not path.startswith((".", "/", "~")):
        msg += (f". {path!r} looks like a Hugging Face Hub id: fetch it yourself first (for example "
                f"`hf download {path}`, which prints the snapshot folder) and pass that folder")
    return msg


def _refuse_pickled_weights(folder: Path) -> None:
    """compdiff loads safetensors only and never unpickles: a component folder whose weights are
    pickles (.bin, .pt, .ckpt, ...) with no safetensors beside them is refused here, before any
    loader (and torch.load) is reached."""
    from compdiff.models import PICKLE_SUFFIXES

    pickles = sorted(p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles and not any(folder.rglob("*.safetensors")):
        raise InputError(f"{folder} holds pickled weights ({', '.join(pickles[:3])}"
                         f"{', ...' if len(pickles) > 3 else ''}); compdiff loads safetensors only and never "
                         "unpickles: re-save the pipeline with save_pretrained(folder, safe_serialization=True)")


def _has_weights(cls: Any) -> bool:
    """Whether a component class loads tensors (a torch module: UNet, VAE, text encoder)."""
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def _load_components(path: str | os.PathLike) -> dict[str, Any]:
    """unet, vae, text_encoder, tokenizer, scheduler from a local pipeline folder (local_files_only;
    safetensors only: pickled weights are refused without being opened)."""
    from compdiff.backends.registry import read_json

    root = Path(path).expanduser()
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise InputError(_missing_model_message(str(path)))
    index = read_json(index_file)  # InputError naming the file: not JSON, not an object
    if (index.get("text_encoder_2") or [None])[0] is not None:
        raise InputError(f"{root}: {SDXL_MESSAGE}")
    missing = [name for name in REQUIRED if not (index.get(name) or [None])[0] or not (root / name).is_dir()]
    if missing:
        raise InputError(f"{root} ({index.get('_class_name', 'unknown pipeline')}) is not a Stable Diffusion-style "
                         f"text-to-image pipeline: missing {', '.join(missing)}")
    classes = {}
    for name in REQUIRED:
        entry = index[name]
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise InputError(f"{index_file}: {name!r} must be [library, class name], got {entry!r}")
        library, class_name = entry
        if library not in ("diffusers", "transformers"):
            raise InputError(f"{index_file}: {name} comes from {library!r}; compdiff loads pipeline components "
                             "from diffusers and transformers only")
        try:
            classes[name] = getattr(importlib.import_module(library), class_name)
        except (ImportError, AttributeError, ValueError) as err:
            raise InputError(f"{root}: cannot load {name}: {library}.{class_name} is not available ({err})") from err
        if _has_weights(classes[name]):
            _refuse_pickled_weights(root / name)
    components = {}
    for name in REQUIRED:
        cls = classes[name]
        kwargs = {} if name == "scheduler" else {"local_files_only": True}
        if _has_weights(cls):
            kwargs["use_safetensors"] = True  # never fall back to pickles
        try:
            components[name] = cls.from_pretrained(str(root / name), **kwargs)
        except OSError as err:
            first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            raise InputError(f"{root}: cannot load {name} ({first}); compdiff does not download models") from err
        except (ValueError, KeyError, TypeError) as err:
            if isinstance(err, InputError):
                raise
            first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            raise InputError(f"{root / name}: cannot load {name} ({first})") from err
    return components


def _components_of(pipeline: Any) -> dict[str, Any]:
    parts = dict(getattr(pipeline, "components", {}))
    if parts.get("text_encoder_2") is not None:
        raise InputError(SDXL_MESSAGE)
    missing = [name for name in REQUIRED if parts.get(name) is None]
    if missing:
        raise InputError(f"{type(pipeline).__name__} is not a Stable Diffusion-style text-to-image pipeline: "
                         f"missing {', '.join(missing)}")
    return {name: parts[name] for name in REQUIRED}


def _check_supported(unet: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) is not None:
        raise InputError(f"this UNet needs added conditions ({cfg.addition_embed_type}): {SDXL_MESSAGE}")
    if getattr(cfg, "time_cond_proj_dim", None) is not None:
        raise InputError("UNets with a guidance-scale embedding (time_cond_proj_dim, e.g. LCM) are not supported")
    if cfg.in_channels != cfg.out_channels:
        raise InputError(f"the UNet takes {cfg.in_channels} input channels but predicts {cfg.out_channels}: "
                         "inpainting / depth / image-conditioned pipelines are not supported, only text-to-image")
    hidden = getattr(text_encoder.config, "hidden_size", None)
    if hidden is not None and cfg.cross_attention_dim != hidden:
        raise InputError(f"text encoder width {hidden} does not match the UNet's cross_attention_dim "
                         f"{cfg.cross_attention_dim}")


def _schedule_of(scheduler: Any) -> NoiseSchedule:
    try:
        return NoiseSchedule.from_diffusers(scheduler)
    except ValueError as err:  # e.g. a zero-terminal-SNR schedule (a_T = 0)
        raise InputError(f"cannot use the scheduler {type(scheduler).__name__}: {err}") from err


class DiffusersBackend(RunsOnDenoiser):
    """A diffusers text-to-image pipeline as compdiff parts.

    Attributes: denoiser (UNetDenoiser), encoder (CLIPPromptEncoder), schedule (NoiseSchedule),
    scheduler (the pipeline's diffusers scheduler, for :func:`sample_with_scheduler`),
    prediction_type, latent_shape (C, h, w) at the default (or given) height/width,
    vae_scale_factor, device (where the UNet runs), dtype; the modules unet, vae, text_encoder,
    tokenizer; offload_hooks (accelerate's hooks after :meth:`enable_cpu_offload`, else []).
    """

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer: Any,
                 scheduler: Any, *, height: int | None = None, width: int | None = None,
                 clip_skip: int | None = None) -> None:
        _check_supported(unet, text_encoder)
        self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler = (
            unet, vae, text_encoder, tokenizer, scheduler)
        self.prediction_type: str = scheduler.config.get("prediction_type", "epsilon")
        self.schedule = _schedule_of(scheduler)
        self.denoiser = UNetDenoiser(unet, self.schedule, self.prediction_type)
        self.encoder = CLIPPromptEncoder(tokenizer, text_encoder, clip_skip=clip_skip)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_shape: tuple[int, int, int] = self.latent_shape_for(height, width)
        self.offload_hooks: list[Any] = []

    @classmethod
    def from_pretrained(cls, path_or_pipeline: str | os.PathLike | Any, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu", height: int | None = None, width: int | None = None,
                        clip_skip: int | None = None, cpu_offload: bool = False) -> DiffusersBackend:
        """From a local pipeline folder (loaded with local_files_only=True; never downloads) or a built
        pipeline object (whose modules are moved to ``device``/``dtype`` in place, as ``pipeline.to`` does).
        cpu_offload: the modules stay in CPU memory and each runs on ``device`` only while it is used
        (:meth:`enable_cpu_offload`).

        Raises InputError for a path that is not a local pipeline folder (hub ids included), SDXL, and
        pipelines that are not plain text-to-image.
        """
        if isinstance(path_or_pipeline, (str, os.PathLike)):
            parts = _load_components(path_or_pipeline)
        else:
            parts = _components_of(path_or_pipeline)
        for name in ("unet", "vae", "text_encoder"):
            parts[name] = parts[name].to(device="cpu" if cpu_offload else device, dtype=dtype).eval()
        backend = cls(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["scheduler"],
                      height=height, width=width, clip_skip=clip_skip)
        if cpu_offload:
            backend.enable_cpu_offload(device)
        return backend

    def enable_cpu_offload(self, device: torch.device | str = "cuda") -> None:
        """accelerate's model CPU offload (diffusers' ``enable_model_cpu_offload``; compdiff.backends.offload):
        text_encoder -> unet -> vae each held in CPU memory and moved to ``device`` only while it runs."""
        self.offload_hooks = enable_model_cpu_offload((self.text_encoder, self.unet, self.vae), device, self.unet)

    # ---- shapes and timesteps ---------------------------------------------------------
    def latent_shape_for(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(C, height/f, width/f) with f the VAE's scale factor; None = the UNet's default resolution."""
        size = self.unet.config.sample_size
        h0, w0 = (size, size) if isinstance(size, int) else tuple(size)
        f = self.vae_scale_factor
        height, width = height or h0 * f, width or w0 * f
        if height % f or width % f:
            raise InputError(f"height and width must be multiples of {f}, got {height}x{width}")
        return (int(self.unet.config.in_channels), height // f, width // f)

    def timesteps(self, num_steps: int) -> Tensor:
        """num_steps descending timesteps spaced as the pipeline's scheduler config says
        (timestep_spacing, steps_offset), for compdiff's own samplers."""
        spacing = self.scheduler.config.get("timestep_spacing", "leading")
        offset = self.scheduler.config.get("steps_offset", 0) if spacing == "leading" else 0
        try:
            return self.schedule.timesteps(num_steps, spacing, offset)
        except ValueError as err:
            raise InputError(str(err)) from err

    # ---- decoding -----------------------------------------------------------------------
    def decode(self, latents: Tensor, batch_size: int = 1) -> Tensor:
        """VAE decode: latents (N, C, h, w) -> images (N, 3, H, W), float32 on the CPU, in [-1, 1]."""
        return vae_decode(self.vae, latents, batch_size)

    # ---- as compdiff.open_model sees it ---------------------------------------------------
    def opened(self, name: str) -> OpenedModel:
        return OpenedModel(self.denoiser, self.encoder, self.schedule, tuple(self.latent_shape), self.decode,
                           "stable-diffusion", name, PIPELINE_SCALE,
                           info={"timestep_spacing": self._spacing(), "scheduler": self.scheduler,
                                 "run_scheduler": sample_with_scheduler})

    def _spacing(self) -> str:
        return self.scheduler.config.get("timestep_spacing", "leading")

    # ---- one-call sampling, for the CLI and scripts ----------------------------------------
    def sample_latents(self, expr: Expr | str, *, n: int = 1, steps: int = 30, guidance_scale: float = 7.5,
                       seeds: Sequence[int] | None = None, scheduler: Any = None, eta: float = 0.0,
                       mode: Mode = "sum", rescale: float = 0.0, max_batch: int | None = None,
                       height: int | None = None, width: int | None = None,
                       callback: Callback | None = None, masks: Masks | None = None, feather: float = 0.0,
                       region_mode: RegionMode = "sum") -> Tensor:
        """Latents (n, C, h, w) for ``expr``: one seed per image (default 0..n-1; image i depends only
        on seeds[i]); compdiff's DDIM with ``self.timesteps(steps)`` when scheduler is None, else the
        given diffusers scheduler via :func:`sample_with_scheduler`. Prompts are encoded once. Regions
        (``"a cat" @ left``) take masks, feather and region_mode as in :func:`compdiff.compose`."""
        seeds = seed_list(n, seeds)
        eps_fn = compose(self.denoiser, self.encoder, expr, guidance_scale=guidance_scale, mode=mode,
                         rescale=rescale, max_batch=max_batch, masks=masks, feather=feather, region_mode=region_mode)
        shape = self.latent_shape if height is None and width is None else self.latent_shape_for(height, width)
        return sample_vp(eps_fn, shape, seeds, device=self.device, schedule=self.schedule, timesteps=self.timesteps,
                         steps=steps, scheduler=scheduler, eta=eta, callback=callback)

    def generate(self, expr: Expr | str, **kwargs: Any) -> Tensor:
        """Images (n, 3, H, W) in [-1, 1]: ``decode(sample_latents(expr, **kwargs))``."""
        return self.decode(self.sample_latents(expr, **kwargs))


#: the pipeline classes this family opens (model_index.json "_class_name"); other families detect theirs
SD_PIPELINES = ("StableDiffusionPipeline",)


def _detect(path: Path) -> bool:
    index = path / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text(encoding="utf-8")).get("_class_name") in SD_PIPELINES
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False  # the registry reports the folder as not a model it can open


def _open(path: Path, *, device: torch.device, dtype: str = "auto", bf16: bool = False,
          cpu_offload: bool = False) -> OpenedModel:
    """Weights in float16 on a GPU and float32 on the CPU unless ``dtype`` names one; cpu_offload: the
    modules stay in CPU memory and run on ``device`` one at a time (compdiff.backends.offload)."""
    if dtype == "auto":
        dtype = "float16" if device.type == "cuda" else "float32"
    return DiffusersBackend.from_pretrained(path, dtype=getattr(torch, dtype), device=device,
                                            cpu_offload=cpu_offload).opened(str(path))


register_backend("stable-diffusion", _detect, _open)

__all__ = ["DiffusersBackend", "UNetDenoiser", "CLIPPromptEncoder", "sample_with_scheduler"]
