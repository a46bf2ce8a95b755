"""Stable Diffusion 3 / 3.5 from a local diffusers pipeline, as compdiff's Denoiser + ConceptEncoder +
FlowSchedule + VAE decoder (family ``"sd3"``, model_index.json ``_class_name`` StableDiffusion3Pipeline).

    sd3 = SD3Backend.from_pretrained("/models/sd35-medium", dtype=torch.bfloat16, device="cuda")
    images = sd3.generate('a stone castle AND NOT "black and white"', n=4, steps=28, guidance_scale=7.0)
    # or by hand: compose in velocity space, sample with compdiff's Euler (FlowMatchEuler step for step)
    fn = compdiff.compose(sd3.denoiser, sd3.encoder, "a castle AND NOT fog", guidance_scale=7.0)
    x_T = compdiff.randn((4, *sd3.latent_shape), compdiff.generators([0, 1, 2, 3]))
    latents = compdiff.sample_euler(fn, x_T, sd3.schedule, sd3.timesteps(28))

What the pieces are:

* condition (``SD3PromptEncoder``): a dict {"tokens": (K, 77 + L, D), "pooled": (K, P)} built exactly
  as diffusers' ``StableDiffusion3Pipeline.encode_prompt`` builds one prompt: the penultimate hidden
  states of CLIP-L and CLIP-G (both ``CLIPTextModelWithProjection``) concatenated on the feature axis
  and zero-padded to the T5 width D (= the transformer's joint_attention_dim), followed by T5's L =
  ``max_sequence_length`` (default 256) token states; "pooled" is CLIP-L's and CLIP-G's projected
  pooled outputs concatenated (P = 2048 for SD3). A folder without T5 (text_encoder_3 null, as saved
  after ``text_encoder_3=None``) gets zeros in place of the T5 states, as diffusers does. The null
  condition ∅ is the empty prompt "", diffusers' own negative prompt for classifier-free guidance.
* denoiser (``SD3Denoiser``): the MMDiT ``SD3Transformer2DModel``, called ONCE per step with every
  row of every concept and ∅ (B·(K+1) rows; composition batches the dict field by field), at
  timestep = t·num_train_timesteps (t = σ in [0, 1], diffusers' scheduler timesteps). Its output is
  the rectified-flow velocity dx/dσ = ε − x_0 (diffusers' FlowMatchEuler step is
  x + (σ_next − σ)·output), which is exactly ``FlowSchedule``'s "velocity"; compdiff composes there
  (velocity composition equals ε composition, docs/operators.md).
* schedule: ``FlowSchedule(shift, t_min)`` from the scheduler config: shift = the scheduler's shift
  (3.0 for SD3 / 3.5), or exp(mu) with diffusers' ``calculate_shift`` of the image sequence length
  when the config asks for dynamic shifting; t_min = scheduler.sigma_min, so that
  ``timesteps(n)`` ("linspace") are FlowMatchEulerDiscreteScheduler's σ and compdiff's Euler takes
  the same steps.
* decode: latents / scaling_factor + shift_factor through the VAE.

Not supported (an InputError names the class found): image-to-image, inpainting, ControlNet and PAG
pipelines, IP-Adapter (a folder or pipeline with an image encoder, or a transformer with image
projections), and skip-layer guidance. compdiff never downloads and never unpickles: a folder is
loaded with ``local_files_only`` and safetensors only.

What SD3 shares with Flux (the flow schedule, timesteps, decoding, one-call sampling) is
``base.FlowBackend``; loading and the refusal of code and pickles named by model_index.json is
``components.py``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from compdiff.backends.base import FlowBackend, calculate_shift, check_flow_scheduler, warn_truncated
from compdiff.backends.components import class_detector, components_of, load_folder, open_dtype, to_device
from compdiff.backends.offload import execution_device
from compdiff.backends.registry import OpenedModel, register_backend
from compdiff.errors import InputError
from compdiff.schedule import Spacing

FAMILY = "sd3"
SD3_PIPELINE = "StableDiffusion3Pipeline"
PIPELINE_SCALE = 7.0  # StableDiffusion3Pipeline's default guidance_scale
DEFAULT_STEPS = 28  # StableDiffusion3Pipeline's default num_inference_steps
MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default T5 window
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
OPTIONAL = ("text_encoder_3", "tokenizer_3")


# =====================================================================================================
# SD3
# =====================================================================================================
class SD3PromptEncoder:
    """ConceptEncoder over SD3's three text encoders: encode(prompts) -> {"tokens": (K, 77 + L, D),
    "pooled": (K, P)}, each row what ``StableDiffusion3Pipeline.encode_prompt`` gives for that prompt
    (see the module docstring); null() -> the empty prompt's (1 row, cached). Truncated prompts warn."""

    def __init__(self, tokenizer: Any, text_encoder: torch.nn.Module, tokenizer_2: Any,
                 text_encoder_2: torch.nn.Module, tokenizer_3: Any | None, text_encoder_3: torch.nn.Module | None,
                 joint_attention_dim: int, max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        if (tokenizer_3 is None) != (text_encoder_3 is None):
            raise InputError("SD3: text_encoder_3 and tokenizer_3 come together (both or neither)")
        if not 1 <= max_sequence_length <= 512:
            raise InputError(f"max_sequence_length must lie in [1, 512], got {max_sequence_length}")
        self.tokenizers = (tokenizer, tokenizer_2)
        self.text_encoders = (text_encoder, text_encoder_2)
        self.tokenizer_3, self.text_encoder_3 = tokenizer_3, text_encoder_3
        self.clip_length = int(tokenizer.model_max_length)  # diffusers uses the first tokenizer's for both
        self.joint_attention_dim = int(joint_attention_dim)
        self.max_sequence_length = int(max_sequence_length)
        self._null: dict[str, Tensor] | None = None

    def _clip(self, i: int, prompts: list[str]) -> tuple[Tensor, Tensor]:
        tokenizer, encoder = self.tokenizers[i], self.text_encoders[i]
        if i == 0:  # both CLIPs read the same window of (in SD3) the same tokens: one warning
            warn_truncated(tokenizer, prompts, self.clip_length, "the CLIP text encoders")
        ids = tokenizer(prompts, padding="max_length", max_length=self.clip_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids.to(execution_device(encoder)), output_hidden_states=True)
        dtype, device = self.text_encoders[0].dtype, execution_device(self.text_encoders[0])
        return out.hidden_states[-2].to(device, dtype), out[0].to(device, dtype)

    def _t5(self, prompts: list[str]) -> Tensor:
        first = self.text_encoders[0]
        if self.text_encoder_3 is None:
            return torch.zeros(len(prompts), self.max_sequence_length, self.joint_attention_dim,
                               device=execution_device(first), dtype=first.dtype)
        warn_truncated(self.tokenizer_3, prompts, self.max_sequence_length, "the T5 text encoder")
        ids = self.tokenizer_3(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                               add_special_tokens=True, return_tensors="pt").input_ids
        out = self.text_encoder_3(ids.to(execution_device(self.text_encoder_3)))[0]
        return out.to(execution_device(first), self.text_encoder_3.dtype)

    @torch.no_grad()
    def encode(self, concepts: Sequence[str]) -> dict[str, Tensor]:
        prompts = list(concepts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        (h1, p1), (h2, p2) = self._clip(0, prompts), self._clip(1, prompts)
        t5 = self._t5(prompts)
        clip = torch.nn.functional.pad(torch.cat([h1, h2], dim=-1), (0, t5.shape[-1] - h1.shape[-1] - h2.shape[-1]))
        return {"tokens": torch.cat([clip, t5.to(clip.dtype)], dim=-2), "pooled": torch.cat([p1, p2], dim=-1)}

    def null(self) -> dict[str, Tensor]:
        if self._null is None:
            self._null = self.encode([""])
        return self._null


class SD3Denoiser:
    """Denoiser over an ``SD3Transformer2DModel``: ``(x (B, C, h, w), t (B,) σ in [0, 1], cond {"tokens",
    "pooled"} of B rows) -> velocity ε − x_0 (B, C, h, w)`` in x's dtype; the transformer gets
    timestep = t·time_scale (float32) and runs in its own dtype, on its execution device."""

    def __init__(self, transformer: torch.nn.Module, time_scale: float = 1000.0) -> None:
        self.transformer = transformer
        self.time_scale = float(time_scale)

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        device, dtype = execution_device(self.transformer), next(self.transformer.parameters()).dtype
        timestep = (torch.as_tensor(t).to(device, torch.float64) * self.time_scale).to(torch.float32)
        out = self.transformer(hidden_states=x.to(device, dtype), timestep=timestep.expand(x.shape[0]),
                               encoder_hidden_states=cond["tokens"].to(device, dtype),
                               pooled_projections=cond["pooled"].to(device, dtype), return_dict=False)[0]
        return out.to(x.device, x.dtype)


class SD3Backend(FlowBackend):
    """A diffusers StableDiffusion3Pipeline as compdiff parts (see the module docstring).

    Attributes: denoiser (SD3Denoiser), encoder (SD3PromptEncoder), schedule (FlowSchedule at the default
    size), scheduler (the pipeline's, for ``sample_latents(scheduler=...)``), latent_shape (C, h, w),
    vae_scale_factor, patch_size, device (where the transformer runs), dtype; the modules transformer, vae,
    text_encoder(_2, _3); offload_hooks (accelerate's hooks after :meth:`enable_cpu_offload`, else []).
    """

    family = FAMILY
    default_scale = PIPELINE_SCALE
    spacing: Spacing = "linspace"  # FlowMatchEulerDiscreteScheduler's σ: linspace(1, σ_min, n), shifted
    default_steps = DEFAULT_STEPS

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module,
                 tokenizer: Any, text_encoder_2: torch.nn.Module, tokenizer_2: Any,
                 text_encoder_3: torch.nn.Module | None, tokenizer_3: Any | None, scheduler: Any, *,
                 height: int | None = None, width: int | None = None,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        cfg = transformer.config
        if getattr(transformer, "image_proj", None) is not None:
            raise InputError("this SD3 transformer carries IP-Adapter image projections: IP-Adapter is not supported")
        if cfg.out_channels != cfg.in_channels:
            raise InputError(f"the transformer takes {cfg.in_channels} channels but predicts {cfg.out_channels}: "
                             "only text-to-image SD3 transformers are supported")
        check_flow_scheduler(scheduler)
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        self.text_encoder, self.text_encoder_2, self.text_encoder_3 = text_encoder, text_encoder_2, text_encoder_3
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = tokenizer, tokenizer_2, tokenizer_3
        self.patch_size = int(cfg.patch_size)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.denoiser = SD3Denoiser(transformer, scheduler.config.get("num_train_timesteps", 1000))
        self.encoder = SD3PromptEncoder(tokenizer, text_encoder, tokenizer_2, text_encoder_2, tokenizer_3,
                                        text_encoder_3, cfg.joint_attention_dim, max_sequence_length)
        self.latent_shape = self.latent_shape_for(height, width)
        self.schedule = self.schedule_for(self.latent_shape)
        self.offload_hooks: list[Any] = []

    @classmethod
    def from_pretrained(cls, path_or_pipeline: str | os.PathLike | Any, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu", height: int | None = None, width: int | None = None,
                        max_sequence_length: int = MAX_SEQUENCE_LENGTH, cpu_offload: bool = False) -> SD3Backend:
        """From a local pipeline folder (local_files_only, safetensors; never downloads) or a built
        StableDiffusion3Pipeline (its modules moved to ``device``/``dtype`` in place). cpu_offload: the modules
        stay in CPU memory and each runs on ``device`` only while it is used (:meth:`enable_cpu_offload`).
        InputError for a path that is not a local folder, another pipeline class (img2img, inpainting,
        ControlNet, ...) or IP-Adapter."""
        if isinstance(path_or_pipeline, (str, os.PathLike)):
            parts = load_folder(path_or_pipeline, SD3_PIPELINE, "Stable Diffusion 3", REQUIRED, OPTIONAL)
        else:
            parts = components_of(path_or_pipeline, SD3_PIPELINE, "Stable Diffusion 3", REQUIRED, OPTIONAL)
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            if parts[name] is not None:
                parts[name] = to_device(parts[name], "cpu" if cpu_offload else device, dtype)
        backend = cls(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                      parts["text_encoder_2"], parts["tokenizer_2"], parts["text_encoder_3"], parts["tokenizer_3"],
                      parts["scheduler"], height=height, width=width, max_sequence_length=max_sequence_length)
        if cpu_offload:
            backend.enable_cpu_offload(device)
        return backend

    def _offload_modules(self) -> tuple[torch.nn.Module | None, ...]:
        return (self.text_encoder, self.text_encoder_2, self.text_encoder_3, self.transformer, self.vae)

    def _mu(self, shape: Sequence[int]) -> float | None:
        if not self.scheduler.config.get("use_dynamic_shifting", False):
            return None
        seq_len = (shape[1] // self.patch_size) * (shape[2] // self.patch_size)
        return calculate_shift(seq_len, self.scheduler.config, 1.16)  # SD3's pipeline defaults max_shift to 1.16

    def _scheduler_options(self, steps: int, shape: Sequence[int]) -> dict[str, Any]:
        mu = self._mu(shape)
        return {} if mu is None else {"mu": mu}

    def _info(self) -> dict[str, Any]:
        return {**super()._info(), "max_sequence_length": self.encoder.max_sequence_length,
                "t5": self.text_encoder_3 is not None}


def _open(path: Path, *, device: torch.device, dtype: str = "auto", bf16: bool = False,
          max_sequence_length: int = MAX_SEQUENCE_LENGTH, cpu_offload: bool = False) -> OpenedModel:
    """Weights in bfloat16 on a GPU and float32 on the CPU unless ``dtype`` names one (bf16, the world
    models' autocast flag, does not apply). cpu_offload: the modules stay in CPU memory and run on
    ``device`` one at a time."""
    backend = SD3Backend.from_pretrained(path, dtype=open_dtype(device, dtype), device=device,
                                         max_sequence_length=max_sequence_length, cpu_offload=cpu_offload)
    return backend.opened(str(path))


register_backend(FAMILY, class_detector("StableDiffusion3"), _open)

__all__ = ["SD3Backend", "SD3Denoiser", "SD3PromptEncoder", "FlowBackend"]
