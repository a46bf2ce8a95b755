"""Stable Diffusion XL (a local ``StableDiffusionXLPipeline``) as compdiff's Denoiser +
ConceptEncoder + NoiseSchedule + VAE decoder: the model family ``"sdxl"``.

    backend = SDXLBackend.from_pretrained("/models/sdxl-base", dtype=torch.float16, device="cuda")
    latents = backend.sample_latents('a stone castle AND NOT "black and white"', n=4, steps=30)
    images = backend.decode(latents)                                   # (4, 3, H, W) in [-1, 1]
    # or piece by piece, exactly as for Stable Diffusion 1.x/2.x (compdiff.backends.diffusers):
    eps_fn = compdiff.compose(backend.denoiser, backend.encoder, "a castle AND NOT fog", guidance_scale=5.0)

The condition of one prompt is a mapping of three fields (``compdiff.condition``), built as
``StableDiffusionXLPipeline.encode_prompt`` and ``_get_add_time_ids`` build them:

* ``tokens`` (K, 77, D1 + D2): the hidden states of BOTH text encoders for the prompt (the
  penultimate layer by default, ``clip_skip`` layers further back when given), concatenated
  along the feature axis (768 + 1280 = 2048 for SDXL);
* ``pooled`` (K, P): ``text_embeds`` of the second encoder (CLIPTextModelWithProjection), P = 1280;
* ``time_ids`` (K, 6): original_size (h, w), crops_coords_top_left (top, left), target_size (h, w),
  by default (H, W, 0, 0, H, W) for images of H x W pixels. They describe the image, not the prompt,
  so the null condition carries the same ids (diffusers does the same).

The null condition: when the pipeline's config says ``force_zeros_for_empty_prompt=True`` (SDXL
base does, and it is StableDiffusionXLPipeline's default) the unconditional ``tokens`` and
``pooled`` are ZEROS, not the embedding of "", exactly as diffusers' pipeline does without a
negative prompt; with ``force_zeros_for_empty_prompt=False`` they are the empty prompt "" through
both encoders (always at the penultimate layer, as diffusers does, even with ``clip_skip``).

Every concept of a step and the null condition go through the UNet in ONE call of B·(K+1) rows
(that is compose's job; nothing here loops over concepts). compdiff never downloads, loads
safetensors only (a component folder holding only pickled weights is refused, never unpickled),
and refuses what it does not run: the refiner (image-to-image only, aesthetic-score time ids),
img2img, inpainting, ControlNet / T2I-Adapter pipelines and IP-Adapter image prompts.
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from compdiff.backends.base import UNetDenoiser, VPBackend, vp_schedule_of
from compdiff.backends.components import (class_detector, load_components, load_index, open_dtype, present,
                                          to_device)
from compdiff.backends.offload import execution_device, release
from compdiff.backends.registry import OpenedModel, register_backend
from compdiff.backends.scheduler_loop import sample_with_scheduler
from compdiff.backends.sd_text import PromptTruncatedWarning
from compdiff.errors import InputError

FAMILY = "sdxl"
#: the one pipeline class this family runs (model_index.json "_class_name")
SDXL_PIPELINE = "StableDiffusionXLPipeline"
PIPELINE_SCALE = 5.0  # StableDiffusionXLPipeline's default guidance scale
MODULES = ("unet", "vae", "text_encoder", "text_encoder_2")
REQUIRED = (*MODULES, "tokenizer", "tokenizer_2", "scheduler")
#: components whose presence means image prompts or spatial control, which compdiff does not run
EXTRA_CONDITIONS = {"controlnet": "ControlNet", "adapter": "T2I-Adapter", "image_encoder": "IP-Adapter image prompts"}
TIME_IDS = 6  # original_size (2) + crops_coords_top_left (2) + target_size (2)


# ---- added time ids -----------------------------------------------------------------------
def add_time_ids(height: int, width: int, original_size: tuple[int, int] | None = None,
                 crops_coords_top_left: tuple[int, int] = (0, 0),
                 target_size: tuple[int, int] | None = None) -> tuple[int, ...]:
    """SDXL's micro-conditioning as ``StableDiffusionXLPipeline.__call__`` / ``_get_add_time_ids``
    build it: original_size + crops_coords_top_left + target_size, the sizes defaulting to
    (height, width). Returns 6 numbers (h, w, top, left, h, w)."""
    original_size = tuple(original_size or (height, width))
    target_size = tuple(target_size or (height, width))
    ids = (*original_size, *tuple(crops_coords_top_left), *target_size)
    if len(ids) != TIME_IDS:
        raise InputError(f"original_size, crops_coords_top_left and target_size must be pairs, got {ids}")
    return tuple(int(v) for v in ids)


# ---- the denoiser -----------------------------------------------------------------------------
class SDXLUNetDenoiser(UNetDenoiser):
    """Denoiser over an SDXL ``UNet2DConditionModel`` (``addition_embed_type="text_time"``).

    ``(x (B, C, h, w) latents, t (B,) timesteps, cond {"tokens" (B, L, D), "pooled" (B, P),
    "time_ids" (B, 6)}) -> eps (B, C, h, w)`` in x's dtype: ONE UNet call with
    ``encoder_hidden_states=tokens`` and ``added_cond_kwargs={"text_embeds": pooled,
    "time_ids": time_ids}``. Devices, dtypes and the conversion to eps are UNetDenoiser's.
    """

    def _unet_kwargs(self, cond: Mapping[str, Tensor], device: torch.device, dtype: torch.dtype) -> dict:
        added = {"text_embeds": cond["pooled"].to(device, dtype), "time_ids": cond["time_ids"].to(device, dtype)}
        return {"encoder_hidden_states": cond["tokens"].to(device, dtype), "added_cond_kwargs": added}


class SDXLPromptEncoder:
    """ConceptEncoder over SDXL's two (tokenizer, text encoder) pairs; see the module docstring.

    ``encode(prompts) -> {"tokens": (K, L, D1 + D2), "pooled": (K, P), "time_ids": (K, 6)}``, every
    field in text_encoder_2's dtype, on its execution device; ``null()`` -> the same fields, 1 row (zeros when
    ``force_zeros_for_empty_prompt``, else the empty prompt; computed once, then cached).
    time_ids: the 6 added time ids (see :func:`add_time_ids`) every row carries; use
    :meth:`with_time_ids` for another image size. clip_skip: as diffusers' ``clip_skip`` for
    SDXL (None = the penultimate layer; n = n layers before it; no final layer norm).
    A prompt longer than a tokenizer's window is truncated with a PromptTruncatedWarning.
    """

    def __init__(self, tokenizer: Any, text_encoder: torch.nn.Module, tokenizer_2: Any,
                 text_encoder_2: torch.nn.Module, time_ids: Sequence[int], *,
                 force_zeros_for_empty_prompt: bool = True, clip_skip: int | None = None) -> None:
        if len(time_ids) != TIME_IDS:
            raise InputError(f"SDXL takes {TIME_IDS} added time ids, got {len(time_ids)}: {tuple(time_ids)}")
        self.tokenizers = (tokenizer, tokenizer_2)
        self.text_encoders = (text_encoder, text_encoder_2)
        self.time_ids = tuple(int(v) for v in time_ids)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self.clip_skip = clip_skip
        self._null_text: tuple[Tensor, Tensor] | None = None

    def with_time_ids(self, time_ids: Sequence[int]) -> SDXLPromptEncoder:
        """The same encoder with other added time ids (e.g. another image size); shares the cached null."""
        if len(time_ids) != TIME_IDS:
            raise InputError(f"SDXL takes {TIME_IDS} added time ids, got {len(time_ids)}: {tuple(time_ids)}")
        out = copy.copy(self)
        out.time_ids = tuple(int(v) for v in time_ids)
        return out

    # ---- text -------------------------------------------------------------------------------
    def _warn_if_truncated(self, prompts: Sequence[str]) -> None:
        for prompt in prompts:
            for tokenizer in self.tokenizers:  # one warning per prompt (SDXL's tokenizers cut alike)
                n = int(tokenizer.model_max_length)
                ids = tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
                if len(ids) > n:
                    # ids = [BOS, tokens..., EOS]; the window keeps BOS + (n - 2) tokens + EOS
                    removed = tokenizer.decode(ids[n - 1:-1])
                    warnings.warn(f"prompt {prompt!r} is {len(ids)} tokens long but the text encoders read at "
                                  f"most {n}: the last {len(ids) - n} tokens were dropped ({removed!r})",
                                  PromptTruncatedWarning, stacklevel=4)
                    break

    @property
    def _out_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        encoder = self.text_encoders[1]  # under cpu_offload its weights wait on the CPU: ask its hook
        return next(encoder.parameters()).dtype, execution_device(encoder)

    @torch.no_grad()
    def _text(self, prompts: list[str], clip_skip: int | None) -> tuple[Tensor, Tensor]:
        """(tokens (K, L, D1 + D2), pooled (K, P)) exactly as diffusers' encode_prompt computes them."""
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            out = encoder(ids.to(execution_device(encoder)), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # text_embeds of the encoder with a projection
                pooled = out[0]
            hidden.append(out.hidden_states[-(2 if clip_skip is None else clip_skip + 2)])
        if pooled is None:
            raise InputError("neither text encoder returns pooled text_embeds: text_encoder_2 must be a "
                             "CLIPTextModelWithProjection")
        dtype, device = self._out_dtype_device
        return torch.cat(hidden, dim=-1).to(device, dtype), pooled.to(device, dtype)

    def _ids(self, rows: int) -> Tensor:
        dtype, device = self._out_dtype_device
        return torch.tensor([self.time_ids], dtype=dtype, device=device).expand(rows, -1).clone()

    def encode(self, concepts: Sequence[str]) -> dict[str, Tensor]:
        """The condition of each prompt, K rows (see the class docstring)."""
        prompts = list(concepts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        self._warn_if_truncated(prompts)
        tokens, pooled = self._text(prompts, self.clip_skip)
        return {"tokens": tokens, "pooled": pooled, "time_ids": self._ids(len(prompts))}

    def null(self) -> dict[str, Tensor]:
        """The unconditional condition, 1 row: zeros when force_zeros_for_empty_prompt (SDXL base),
        else the empty prompt "" through both encoders (penultimate layer, as diffusers)."""
        if self._null_text is None:
            if self.force_zeros_for_empty_prompt:
                dtype, device = self._out_dtype_device
                length = int(self.tokenizers[0].model_max_length)
                width = sum(int(e.config.hidden_size) for e in self.text_encoders)
                proj = int(self.text_encoders[1].config.projection_dim)
                self._null_text = (torch.zeros(1, length, width, dtype=dtype, device=device),
                                   torch.zeros(1, proj, dtype=dtype, device=device))
            else:
                self._null_text = self._text([""], None)
        tokens, pooled = self._null_text
        return {"tokens": tokens, "pooled": pooled, "time_ids": self._ids(1)}


# ---- loading --------------------------------------------------------------------------------------
def _refusal(kind: str, where: str) -> InputError:
    return InputError(f"{where} is {kind}; compdiff's {FAMILY!r} family runs only text-to-image "
                      f"{SDXL_PIPELINE} (SDXL base and its fine-tunes)")


def _check_index(index: dict[str, Any], where: str) -> None:
    """InputError for SDXL layouts compdiff does not run, naming the class found."""
    cls = str(index.get("_class_name", "unknown pipeline"))
    present = {name for name, entry in index.items()
               if isinstance(entry, list) and entry and entry[0] is not None}
    named = f"{where} ({cls})"
    if index.get("requires_aesthetics_score") or ("text_encoder_2" in present and "text_encoder" not in present):
        raise _refusal("a refiner-only SDXL pipeline (image-to-image, one text encoder, aesthetic-score time ids)",
                       named)
    for component, what in EXTRA_CONDITIONS.items():
        if component in present:
            raise _refusal(f"a pipeline with {what} (its {component} component)", named)
    if cls != SDXL_PIPELINE:
        kind = ("a ControlNet pipeline" if "ControlNet" in cls else "a T2I-Adapter pipeline" if "Adapter" in cls
                else "an inpainting pipeline" if "Inpaint" in cls else "an image-to-image pipeline" if "Img2Img" in cls
                else "a pipeline of another kind")
        raise _refusal(kind, named)


def _load_components(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(components, model_index) of a local SDXL pipeline folder (components.py: local files, safetensors
    only; code and pickles named by model_index.json refused before any import)."""
    root, index = load_index(path)
    _check_index(index, str(root))
    missing = [name for name in REQUIRED if not present(index, name) or not (root / name).is_dir()]
    if missing:
        raise InputError(f"{root} ({index.get('_class_name')}) is not a complete SDXL pipeline: missing "
                         f"{', '.join(missing)}")
    return load_components(root, index, REQUIRED), index


def _components_of(pipeline: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(components, config) of a built pipeline object, with the same refusals as a folder."""
    from diffusers import StableDiffusionXLPipeline

    parts = dict(getattr(pipeline, "components", {}))
    config = dict(getattr(pipeline, "config", {}))
    cls = SDXL_PIPELINE if isinstance(pipeline, StableDiffusionXLPipeline) else type(pipeline).__name__
    index = {**config, "_class_name": cls}
    for name, value in parts.items():  # as model_index.json lists them: [library, class] or [null, null]
        index[name] = [None, None] if value is None else [type(value).__module__.split(".")[0], type(value).__name__]
    _check_index(index, "the pipeline object")
    missing = [name for name in REQUIRED if parts.get(name) is None]
    if missing:
        raise InputError(f"{type(pipeline).__name__} is not a complete SDXL pipeline: missing {', '.join(missing)}")
    return {name: parts[name] for name in REQUIRED}, config


def _check_unet(unet: torch.nn.Module, text_encoder: torch.nn.Module, text_encoder_2: torch.nn.Module) -> None:
    """InputError for a UNet this backend cannot drive with (tokens, pooled, 6 time ids)."""
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) != "text_time":
        raise InputError(f"the UNet's addition_embed_type is {getattr(cfg, 'addition_embed_type', None)!r}, "
                         "not SDXL's 'text_time' (pooled text embeddings + added time ids)")
    if getattr(cfg, "encoder_hid_dim_type", None) is not None or getattr(unet, "encoder_hid_proj", None) is not None:
        raise InputError("this UNet has an IP-Adapter image projection loaded (encoder_hid_dim_type "
                         f"{getattr(cfg, 'encoder_hid_dim_type', None)!r}): IP-Adapter image prompts are not supported")
    if getattr(cfg, "time_cond_proj_dim", None) is not None:
        raise InputError("UNets with a guidance-scale embedding (time_cond_proj_dim, e.g. LCM) are not supported")
    if cfg.in_channels != cfg.out_channels:
        raise InputError(f"the UNet takes {cfg.in_channels} input channels but predicts {cfg.out_channels}: "
                         "inpainting / image-conditioned pipelines are not supported, only text-to-image")
    width = int(text_encoder.config.hidden_size) + int(text_encoder_2.config.hidden_size)
    if cfg.cross_attention_dim != width:
        raise InputError(f"the two text encoders give {width} features per token but the UNet's "
                         f"cross_attention_dim is {cfg.cross_attention_dim}")
    projection = getattr(text_encoder_2.config, "projection_dim", None)
    if projection is None:
        raise InputError(f"text_encoder_2 ({type(text_encoder_2).__name__}) has no projection_dim: SDXL's second "
                         "encoder is a CLIPTextModelWithProjection")
    passed = int(cfg.addition_time_embed_dim) * TIME_IDS + int(projection)
    expected = unet.add_embedding.linear_1.in_features
    if passed != expected:  # the refiner's UNet takes 5 time ids (with an aesthetic score)
        raise InputError(f"the UNet expects an added embedding of {expected} numbers but {TIME_IDS} time ids and "
                         f"the pooled embedding give {passed} (a refiner UNet with aesthetic-score ids?)")


# ---- the backend -----------------------------------------------------------------------------------
class SDXLBackend(VPBackend):
    """A StableDiffusionXLPipeline as compdiff parts (the API of ``DiffusersBackend``).

    Attributes: denoiser (SDXLUNetDenoiser), encoder (SDXLPromptEncoder, with the time ids of the
    default or given height/width), schedule (NoiseSchedule), scheduler (the pipeline's diffusers
    scheduler, for :func:`sample_with_scheduler`), prediction_type, latent_shape (C, h, w),
    height, width (pixels), vae_scale_factor, force_zeros_for_empty_prompt, device (where the UNet runs),
    dtype; the modules unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2; offload_hooks
    (accelerate's hooks after :meth:`enable_cpu_offload`, else []). Sampling defaults: ddim, 50 steps,
    "trailing" spacing, guidance scale 5.0; a size passed to ``generate`` / ``sample_latents`` sets the
    time ids too (:meth:`encoder_for`).
    """

    family = FAMILY
    default_scale = PIPELINE_SCALE

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module,
                 text_encoder_2: torch.nn.Module, tokenizer: Any, tokenizer_2: Any, scheduler: Any, *,
                 force_zeros_for_empty_prompt: bool = True, height: int | None = None, width: int | None = None,
                 clip_skip: int | None = None) -> None:
        _check_unet(unet, text_encoder, text_encoder_2)
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.text_encoder, self.text_encoder_2, self.tokenizer, self.tokenizer_2 = (
            text_encoder, text_encoder_2, tokenizer, tokenizer_2)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self.prediction_type: str = scheduler.config.get("prediction_type", "epsilon")
        self.schedule = vp_schedule_of(scheduler)
        self.denoiser = SDXLUNetDenoiser(unet, self.schedule, self.prediction_type)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_shape: tuple[int, int, int] = self.latent_shape_for(height, width)
        f = self.vae_scale_factor
        self.height, self.width = self.latent_shape[1] * f, self.latent_shape[2] * f
        self.encoder = SDXLPromptEncoder(tokenizer, text_encoder, tokenizer_2, text_encoder_2,
                                         add_time_ids(self.height, self.width),
                                         force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
                                         clip_skip=clip_skip)
        self.offload_hooks: list[Any] = []

    @classmethod
    def from_pretrained(cls, path_or_pipeline: str | os.PathLike | Any, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu", height: int | None = None, width: int | None = None,
                        clip_skip: int | None = None, cpu_offload: bool = False) -> SDXLBackend:
        """From a local StableDiffusionXLPipeline folder (local files and safetensors only; never downloads)
        or a built pipeline object (whose modules are moved to ``device``/``dtype`` in place, as
        ``pipeline.to`` does). ``force_zeros_for_empty_prompt`` comes from the pipeline's config.
        cpu_offload: the modules stay in CPU memory and each runs on ``device`` only while it is used
        (:meth:`enable_cpu_offload`).

        Raises InputError for a path that is not a local pipeline folder (hub ids included), pickled
        weights, refiner / img2img / inpainting / ControlNet / IP-Adapter pipelines.
        """
        if isinstance(path_or_pipeline, (str, os.PathLike)):
            parts, config = _load_components(path_or_pipeline)
        else:
            parts, config = _components_of(path_or_pipeline)
        for name in MODULES:
            parts[name] = to_device(parts[name], "cpu" if cpu_offload else device, dtype)
        backend = cls(parts["unet"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"],
                      parts["tokenizer"], parts["tokenizer_2"], parts["scheduler"],
                      force_zeros_for_empty_prompt=config.get("force_zeros_for_empty_prompt", True),
                      height=height, width=width, clip_skip=clip_skip)
        if cpu_offload:
            backend.enable_cpu_offload(device)
        return backend

    def _offload_modules(self) -> tuple[torch.nn.Module | None, ...]:
        return (self.text_encoder, self.text_encoder_2, self.unet, self.vae)

    # ---- shapes, sizes and timesteps ------------------------------------------------------------
    def encoder_for(self, height: int | None = None, width: int | None = None, *,
                    original_size: tuple[int, int] | None = None, crops_coords_top_left: tuple[int, int] = (0, 0),
                    target_size: tuple[int, int] | None = None) -> SDXLPromptEncoder:
        """The encoder whose conditions carry the time ids of images of height x width (default: the
        backend's) and the given micro-conditioning (see :func:`add_time_ids`)."""
        _, h, w = self.latent_shape_for(height or self.height, width or self.width)
        f = self.vae_scale_factor
        return self.encoder.with_time_ids(add_time_ids(h * f, w * f, original_size, crops_coords_top_left,
                                                       target_size))

    # ---- decoding -------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int = 1) -> Tensor:
        """VAE decode: latents (N, C, h, w) -> images (N, 3, H, W), float32 on the CPU, in [-1, 1].

        As StableDiffusionXLPipeline: latents / scaling_factor (0.13025 for SDXL), or
        latents · latents_std / scaling_factor + latents_mean when the VAE config has both; a float16
        VAE whose config says ``force_upcast`` (SDXL's does: it overflows in float16) decodes in float32
        and is put back to float16 afterwards. batch_size images at a time. An offloaded VAE (cpu_offload)
        runs on its execution device and goes back to the CPU afterwards."""
        vae, cfg = self.vae, self.vae.config
        upcast = next(vae.parameters()).dtype == torch.float16 and bool(getattr(cfg, "force_upcast", False))
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            z = latents.to(execution_device(vae), next(vae.parameters()).dtype)
            mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
            if mean is not None and std is not None:
                shape = (1, -1, 1, 1)
                z = (z * torch.tensor(std, device=z.device, dtype=z.dtype).view(shape) / cfg.scaling_factor
                     + torch.tensor(mean, device=z.device, dtype=z.dtype).view(shape))
            else:
                z = z / cfg.scaling_factor
            images = [vae.decode(z[i:i + batch_size], return_dict=False)[0].float().cpu()
                      for i in range(0, z.shape[0], batch_size)]
        finally:
            if upcast:
                vae.to(dtype=torch.float16)
            release(vae)
        return torch.cat(images).clamp(-1, 1)

    # ---- as compdiff.open_model sees it -------------------------------------------------------------
    def _info(self) -> dict[str, Any]:
        return {**super()._info(), "height": self.height, "width": self.width,
                "force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt}


# ---- the registry's view --------------------------------------------------------------------------------
def _open(path: Path, *, device: torch.device, dtype: str = "auto", bf16: bool = False,
          cpu_offload: bool = False) -> OpenedModel:
    """Weights in float16 on a GPU and float32 on the CPU unless ``dtype`` names one (the VAE then decodes
    in float32 when its config says force_upcast). ``bf16`` (world models' autocast) does not apply.
    cpu_offload: the modules stay in CPU memory and run on ``device`` one at a time."""
    return SDXLBackend.from_pretrained(path, dtype=open_dtype(device, dtype, torch.float16), device=device,
                                       cpu_offload=cpu_offload).opened(str(path))


#: any SDXL pipeline folder (class StableDiffusionXL...): the text-to-image one opens, the others (refiner,
#: img2img, inpainting, ControlNet, ...) are refused by ``_open`` with a message naming them
_detect = class_detector("StableDiffusionXL")
register_backend(FAMILY, _detect, _open)

__all__ = ["SDXLBackend", "SDXLUNetDenoiser", "SDXLPromptEncoder", "add_time_ids", "sample_with_scheduler"]
