"""FLUX.1 (dev and schnell) from a local diffusers pipeline, as compdiff's Denoiser + ConceptEncoder +
FlowSchedule + VAE decoder (family ``"flux"``, model_index.json ``_class_name`` FluxPipeline).

    flux = FluxBackend.from_pretrained("/models/flux1-dev", dtype=torch.bfloat16, device="cuda")
    images = flux.generate("a red cube AND a blue sphere AND NOT fog", n=4, steps=28)  # scale 1, guidance 3.5

What AND / NOT mean on a guidance-distilled model
--------------------------------------------------
FLUX.1-dev was distilled from classifier-free guidance: its transformer takes the guidance strength g
as an input (a guidance embedding) and predicts, in one call, roughly what the teacher's CFG at
strength g would have produced. It has no trained unconditional model and was never meant to be
guided again; ``FluxPipeline`` runs one call per step and no CFG (``true_cfg_scale`` = 1). compdiff
defines composition on it in the "true CFG" form, with every prediction taken at the SAME distilled
guidance g (``distilled_guidance``, default 3.5, the pipeline's ``guidance_scale`` default):

    v*(x, t) = v(x, t | ∅; g) + Σ_i w_i · s · (v(x, t | c_i; g) − v(x, t | ∅; g))

where v(· | c; g) is the transformer's velocity for prompt c at distilled guidance g, ∅ is the EMPTY
prompt "" at that same g, s is compdiff's guidance scale (default 1.0) and w_i the weights, negative
for NOT. AND adds a concept's difference from ∅, NOT subtracts it. With one concept and s = 1 this
is exactly the pipeline's output v(c; g) (the ∅ terms cancel), which the tests check.

This is an APPROXIMATION, not the composition of densities the rule means on an undistilled model:
each v(c; g) is already a guided prediction, so the differences v(c_i; g) − v(∅; g) are differences
of distilled CFG outputs, not of conditional scores, and how well they add depends on how faithfully
the distillation behaves like CFG at strength g away from the prompts it was trained on (and on ∅ =
"" being a reasonable unconditional prediction at that g). Expect AND/NOT to work for concepts the
model renders well alone, to be weaker and less predictable than on SD/SD3, and s much above 1 to
over-saturate (the guidance is applied twice: once distilled, once here). FLUX.1-schnell has no
guidance embedding (``distilled_guidance`` is ignored there) and is timestep-distilled for ~4 steps;
the same rule applies with the same caveat.

The pieces: condition {"tokens": (K, L, 4096) T5 states (L = ``max_sequence_length``, 512 by default),
"pooled": (K, 768) CLIP pooled output} exactly as ``FluxPipeline.encode_prompt`` builds them; text ids
are zeros (L, 3) as diffusers sets them. Latents are kept unpacked (C, h, w) = (16, H/8, W/8) so every
compdiff sampler and the composition work on them unchanged; the denoiser packs them into 2×2 patches
(h/2·w/2 tokens of 4C, diffusers' ``_pack_latents``) with diffusers' latent image ids, calls the
transformer ONCE per step for all B·(K+1) rows at timestep σ (diffusers divides its timesteps by 1000)
with the guidance embedding g, and unpacks the velocity. The schedule is ``FlowSchedule(shift, t_min)``
with the shift FluxPipeline uses: exp(mu) with mu = ``calculate_shift(h/2·w/2, ...)`` from the
scheduler config when it shifts dynamically (dev), else the scheduler's shift (schnell: 1); the
pipeline's σ are linspace(1, 1/n, n) before the shift, which is FlowSchedule's "trailing" spacing,
so ``timesteps(n)`` and compdiff's Euler reproduce FluxPipeline step for step. The default size is
the VAE config's sample_size (1024 for FLUX.1's VAE, the pipeline's 128·8) when it is a multiple of
16, else 128·vae_scale_factor. Not supported (InputError naming the class): img2img, inpainting,
Fill, Control, ControlNet, Kontext, Redux, FLUX.2 pipelines and IP-Adapter.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from compdiff.backends.base import FlowBackend, calculate_shift, check_flow_scheduler, warn_truncated
from compdiff.backends.components import class_detector, components_of, load_folder, open_dtype, to_device
from compdiff.backends.offload import execution_device
from compdiff.backends.registry import OpenedModel, register_backend
from compdiff.errors import InputError
from compdiff.schedule import Spacing

FAMILY = "flux"
FLUX_PIPELINE = "FluxPipeline"
DEFAULT_SCALE = 1.0  # compdiff's s: no CFG on top of the distilled guidance
DISTILLED_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale (the guidance embedding of dev)
DEFAULT_STEPS = 28  # FluxPipeline's default num_inference_steps (dev)
SCHNELL_STEPS = 4  # schnell (no guidance embedding) is distilled for a few steps
MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's default T5 window
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")


def pack(x: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h/2·w/2, 4C): 2×2 patches, diffusers' ``FluxPipeline._pack_latents``."""
    B, C, h, w = x.shape
    return x.view(B, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (h // 2) * (w // 2), C * 4)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """The inverse of :func:`pack`: (B, h/2·w/2, 4C) -> (B, C, h, w)."""
    B, _, D = x.shape
    return x.view(B, h // 2, w // 2, D // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, D // 4, h, w)


def image_ids(h2: int, w2: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(h2·w2, 3) latent image ids (0, row, column), diffusers' ``_prepare_latent_image_ids``."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


class FluxPromptEncoder:
    """ConceptEncoder over Flux's CLIP + T5: encode(prompts) -> {"tokens": (K, L, D) T5 last hidden states,
    "pooled": (K, P) CLIP pooled output}, as ``FluxPipeline.encode_prompt``; null() -> the empty prompt's
    (1 row, cached). Truncated prompts warn."""

    def __init__(self, tokenizer: Any, text_encoder: torch.nn.Module, tokenizer_2: Any,
                 text_encoder_2: torch.nn.Module, max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        if not 1 <= max_sequence_length <= 512:
            raise InputError(f"max_sequence_length must lie in [1, 512], got {max_sequence_length}")
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2
        self.clip_length = int(tokenizer.model_max_length)
        self.max_sequence_length = int(max_sequence_length)
        self._null: dict[str, Tensor] | None = None

    @torch.no_grad()
    def encode(self, concepts: Sequence[str]) -> dict[str, Tensor]:
        prompts = list(concepts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        device = execution_device(self.text_encoder_2)
        warn_truncated(self.tokenizer, prompts, self.clip_length, "the CLIP text encoder")
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.clip_length, truncation=True,
                             return_tensors="pt").input_ids
        pooled = self.text_encoder(ids.to(execution_device(self.text_encoder)), output_hidden_states=False).pooler_output
        warn_truncated(self.tokenizer_2, prompts, self.max_sequence_length, "the T5 text encoder")
        ids = self.tokenizer_2(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                               return_tensors="pt").input_ids
        tokens = self.text_encoder_2(ids.to(device), output_hidden_states=False)[0]
        return {"tokens": tokens.to(device, self.text_encoder_2.dtype),
                "pooled": pooled.to(device, self.text_encoder.dtype)}

    def null(self) -> dict[str, Tensor]:
        if self._null is None:
            self._null = self.encode([""])
        return self._null


class FluxDenoiser:
    """Denoiser over a ``FluxTransformer2DModel``: ``(x (B, C, h, w) unpacked latents, t (B,) σ in [0, 1],
    cond {"tokens", "pooled"} of B rows) -> velocity ε − x_0 (B, C, h, w)`` in x's dtype. Packs x, adds
    image/text ids and, when the transformer has a guidance embedding, guidance = ``distilled_guidance``
    for every row; the transformer runs in its own dtype, on its execution device."""

    def __init__(self, transformer: torch.nn.Module, distilled_guidance: float = DISTILLED_GUIDANCE) -> None:
        self.transformer = transformer
        self.distilled_guidance = float(distilled_guidance)
        self.guidance_embeds = bool(transformer.config.get("guidance_embeds", False))

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        device, dtype = execution_device(self.transformer), next(self.transformer.parameters()).dtype
        B, _, h, w = x.shape
        tokens = cond["tokens"].to(device, dtype)
        timestep = torch.as_tensor(t).to(device, torch.float32).expand(B)
        guidance = (torch.full((B,), self.distilled_guidance, device=device, dtype=torch.float32)
                    if self.guidance_embeds else None)
        out = self.transformer(hidden_states=pack(x.to(device, dtype)), timestep=timestep, guidance=guidance,
                               pooled_projections=cond["pooled"].to(device, dtype), encoder_hidden_states=tokens,
                               txt_ids=torch.zeros(tokens.shape[1], 3, device=device, dtype=dtype),
                               img_ids=image_ids(h // 2, w // 2, device, dtype), return_dict=False)[0]
        return unpack(out, h, w).to(x.device, x.dtype)


class FluxBackend(FlowBackend):
    """A diffusers FluxPipeline (FLUX.1 dev or schnell) as compdiff parts (see the module docstring for
    what AND/NOT mean here).

    Attributes: denoiser (FluxDenoiser), encoder (FluxPromptEncoder), schedule (FlowSchedule at the default
    size; the shift depends on the size), scheduler (the pipeline's), distilled_guidance (None for schnell),
    guidance_embeds, latent_shape (C, h, w) unpacked, vae_scale_factor, device (where the transformer runs),
    dtype; the modules; offload_hooks (accelerate's hooks after :meth:`enable_cpu_offload`, else []).
    """

    family = FAMILY
    default_scale = DEFAULT_SCALE
    spacing: Spacing = "trailing"  # linspace(1, 1/n, n), FluxPipeline's σ before the shift

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module,
                 tokenizer: Any, text_encoder_2: torch.nn.Module, tokenizer_2: Any, scheduler: Any, *,
                 height: int | None = None, width: int | None = None,
                 distilled_guidance: float = DISTILLED_GUIDANCE,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        cfg = transformer.config
        if getattr(transformer, "encoder_hid_proj", None) is not None:
            raise InputError("this Flux transformer carries IP-Adapter image projections: IP-Adapter is not supported")
        if (cfg.out_channels or cfg.in_channels) != cfg.in_channels or cfg.in_channels % 4:
            raise InputError(f"the transformer takes {cfg.in_channels} channels but predicts {cfg.out_channels}: "
                             "Fill / Control (image-conditioned) Flux transformers are not supported")
        check_flow_scheduler(scheduler)
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.guidance_embeds = bool(cfg.get("guidance_embeds", False))
        self.denoiser = FluxDenoiser(transformer, distilled_guidance)
        self.distilled_guidance = self.denoiser.distilled_guidance if self.guidance_embeds else None
        self.default_steps = DEFAULT_STEPS if self.guidance_embeds else SCHNELL_STEPS
        self.encoder = FluxPromptEncoder(tokenizer, text_encoder, tokenizer_2, text_encoder_2, max_sequence_length)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_shape = self.latent_shape_for(height, width)
        self.schedule = self.schedule_for(self.latent_shape)
        self.offload_hooks: list[Any] = []

    @classmethod
    def from_pretrained(cls, path_or_pipeline: str | os.PathLike | Any, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu", height: int | None = None, width: int | None = None,
                        distilled_guidance: float = DISTILLED_GUIDANCE,
                        max_sequence_length: int = MAX_SEQUENCE_LENGTH, cpu_offload: bool = False) -> FluxBackend:
        """From a local pipeline folder (local_files_only, safetensors; never downloads) or a built
        FluxPipeline (its modules moved to ``device``/``dtype`` in place). distilled_guidance: the guidance
        embedding's value for every prediction, ∅ included (dev; ignored by schnell). cpu_offload: the
        modules stay in CPU memory and each runs on ``device`` only while it is used
        (:meth:`enable_cpu_offload`). InputError for a path that is not a local folder, another pipeline
        class (img2img, Fill, ControlNet, ...) or IP-Adapter."""
        if isinstance(path_or_pipeline, (str, os.PathLike)):
            parts = load_folder(path_or_pipeline, FLUX_PIPELINE, "FLUX.1", REQUIRED)
        else:
            parts = components_of(path_or_pipeline, FLUX_PIPELINE, "FLUX.1", REQUIRED)
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            parts[name] = to_device(parts[name], "cpu" if cpu_offload else device, dtype)
        backend = cls(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                      parts["text_encoder_2"], parts["tokenizer_2"], parts["scheduler"], height=height, width=width,
                      distilled_guidance=distilled_guidance, max_sequence_length=max_sequence_length)
        if cpu_offload:
            backend.enable_cpu_offload(device)
        return backend

    def _offload_modules(self) -> tuple[torch.nn.Module | None, ...]:
        return (self.text_encoder, self.text_encoder_2, self.transformer, self.vae)

    def _default_pixels(self) -> tuple[int, int]:
        """The VAE config's sample_size when it is a multiple of 2f, else 128·f (the module docstring)."""
        f, size = self.vae_scale_factor, self.vae.config.get("sample_size")
        size = size if isinstance(size, int) and size > 0 and size % (2 * f) == 0 else 128 * f
        return size, size

    def _size_multiple(self) -> int:
        return 2 * self.vae_scale_factor  # latents are packed in 2×2 patches

    def _latent_channels(self) -> int:
        return int(self.transformer.config.in_channels) // 4  # unpacked: the transformer reads 4C per token

    def _mu(self, shape: Sequence[int]) -> float | None:
        if not self.scheduler.config.get("use_dynamic_shifting", False):
            return None
        return calculate_shift((shape[1] // 2) * (shape[2] // 2), self.scheduler.config, 1.15)

    def _scheduler_options(self, steps: int, shape: Sequence[int]) -> dict[str, Any]:
        """What FluxPipeline passes to set_timesteps: σ = linspace(1, 1/n, n) and mu (always; a scheduler
        without dynamic shifting ignores it)."""
        mu = calculate_shift((shape[1] // 2) * (shape[2] // 2), self.scheduler.config, 1.15)
        options: dict[str, Any] = {"mu": mu}
        if not self.scheduler.config.get("use_flow_sigmas", False):
            options["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        return options

    def _info(self) -> dict[str, Any]:
        return {**super()._info(), "distilled_guidance": self.distilled_guidance,
                "max_sequence_length": self.encoder.max_sequence_length}


def _open(path: Path, *, device: torch.device, dtype: str = "auto", bf16: bool = False,
          distilled_guidance: float = DISTILLED_GUIDANCE,
          max_sequence_length: int = MAX_SEQUENCE_LENGTH, cpu_offload: bool = False) -> OpenedModel:
    """Weights in bfloat16 on a GPU and float32 on the CPU unless ``dtype`` names one. The registry passes
    device, dtype, bf16 and (when asked) cpu_offload only; distilled_guidance / max_sequence_length are there
    for a front end that threads them through (the OpenedModel's denoiser.distilled_guidance may also be set
    afterwards). cpu_offload: the modules stay in CPU memory and run on ``device`` one at a time."""
    backend = FluxBackend.from_pretrained(path, dtype=open_dtype(device, dtype), device=device,
                                          distilled_guidance=distilled_guidance,
                                          max_sequence_length=max_sequence_length, cpu_offload=cpu_offload)
    return backend.opened(str(path))


register_backend(FAMILY, class_detector("Flux"), _open)

__all__ = ["FluxBackend", "FluxDenoiser", "FluxPromptEncoder", "pack", "unpack"]
