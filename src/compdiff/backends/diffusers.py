"""Stable Diffusion (1.x / 2.x and kin) from a local diffusers pipeline, as compdiff's
Denoiser + ConceptEncoder + NoiseSchedule + VAE decoder.

    backend = DiffusersBackend.from_pretrained("/models/sd15")       # or a pipeline object
    eps_fn = compdiff.compose(backend.denoiser, backend.encoder,
                              'a stone castle AND NOT "black and white"', guidance_scale=7.5)
    images = backend.generate('a stone castle AND NOT "black and white"', n=4, steps=30)  # compdiff.generate
    # the same, any front end: compdiff.generate(compdiff.open_model("/models/sd15"), expr, range(4), steps=30)
    # or with the pipeline's own scheduler (its own "leading" timesteps): backend.generate(..., scheduler="pipeline")

Every concept of a step and the empty prompt go through the UNet in ONE call of B·(K+1)
rows (that is compose's job; nothing here loops over concepts). compdiff never downloads:
a path that is not a local pipeline directory is an InputError saying so. SDXL, SD3 and Flux
folders are opened by their own families (sdxl.py, sd3.py, flux.py); this one says so. What all VP
families share (schedule, timesteps, decoding, one-call sampling) is ``base.VPBackend``; loading and the
refusal of code and pickles named by model_index.json is ``components.py``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from compdiff.backends.base import UNetDenoiser, VPBackend, vp_schedule_of
from compdiff.backends.components import load_components, load_index, open_dtype, present, read_index, to_device
from compdiff.backends.registry import OpenedModel, register_backend
from compdiff.backends.scheduler_loop import sample_with_scheduler
from compdiff.backends.sd_text import CLIPPromptEncoder
from compdiff.errors import InputError

FAMILY = "stable-diffusion"
REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PIPELINE_SCALE = 7.5  # diffusers' default guidance scale for Stable Diffusion
SDXL_MESSAGE = ("this is an SDXL pipeline (two text encoders, pooled text embeddings and added time ids): "
                "open it with compdiff.open_model(folder) or compdiff.backends.SDXLBackend, the 'sdxl' family")


def _load_components(path: str | os.PathLike) -> dict[str, Any]:
    """unet, vae, text_encoder, tokenizer, scheduler from a local pipeline folder (components.py: local
    files, safetensors only; code and pickles named by model_index.json refused before any import)."""
    root, index = load_index(path)
    if present(index, "text_encoder_2"):
        raise InputError(f"{root}: {SDXL_MESSAGE}")
    missing = [name for name in REQUIRED if not present(index, name) or not (root / name).is_dir()]
    if missing:
        raise InputError(f"{root} ({index.get('_class_name', 'unknown pipeline')}) is not a Stable Diffusion-style "
                         f"text-to-image pipeline: missing {', '.join(missing)}")
    return load_components(root, index, REQUIRED)


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


class DiffusersBackend(VPBackend):
    """A diffusers text-to-image pipeline as compdiff parts.

    Attributes: denoiser (UNetDenoiser), encoder (CLIPPromptEncoder), schedule (NoiseSchedule),
    scheduler (the pipeline's diffusers scheduler, ``generate(scheduler="pipeline")``),
    prediction_type, latent_shape (C, h, w) at the default (or given) height/width,
    vae_scale_factor, device (where the UNet runs), dtype; the modules unet, vae, text_encoder,
    tokenizer; offload_hooks (accelerate's hooks after :meth:`enable_cpu_offload`, else []).
    Sampling defaults: ddim, 50 steps, "trailing" spacing, guidance scale 7.5.
    """

    family = FAMILY
    default_scale = PIPELINE_SCALE

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer: Any,
                 scheduler: Any, *, height: int | None = None, width: int | None = None,
                 clip_skip: int | None = None) -> None:
        _check_supported(unet, text_encoder)
        self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler = (
            unet, vae, text_encoder, tokenizer, scheduler)
        self.prediction_type: str = scheduler.config.get("prediction_type", "epsilon")
        self.schedule = vp_schedule_of(scheduler)
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
            parts[name] = to_device(parts[name], "cpu" if cpu_offload else device, dtype)
        backend = cls(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["scheduler"],
                      height=height, width=width, clip_skip=clip_skip)
        if cpu_offload:
            backend.enable_cpu_offload(device)
        return backend

    def _offload_modules(self) -> tuple[torch.nn.Module | None, ...]:
        return (self.text_encoder, self.unet, self.vae)


#: the pipeline classes this family opens (model_index.json "_class_name"); other families detect theirs
SD_PIPELINES = ("StableDiffusionPipeline",)


def _detect(path: Path) -> bool:
    index = read_index(path)
    return bool(index) and index.get("_class_name") in SD_PIPELINES


def _open(path: Path, *, device: torch.device, dtype: str = "auto", bf16: bool = False,
          cpu_offload: bool = False) -> OpenedModel:
    """Weights in float16 on a GPU and float32 on the CPU unless ``dtype`` names one; cpu_offload: the
    modules stay in CPU memory and run on ``device`` one at a time (compdiff.backends.offload)."""
    return DiffusersBackend.from_pretrained(path, dtype=open_dtype(device, dtype, torch.float16), device=device,
                                            cpu_offload=cpu_offload).opened(str(path))


register_backend(FAMILY, _detect, _open)

__all__ = ["DiffusersBackend", "UNetDenoiser", "CLIPPromptEncoder", "sample_with_scheduler"]
