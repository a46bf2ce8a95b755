"""PixArt-Σ from a local diffusers pipeline, as compdiff's Denoiser + ConceptEncoder + NoiseSchedule +
VAE decoder (family ``"pixart"``, model_index.json ``_class_name`` PixArtSigmaPipeline).

    pixart = PixArtBackend.from_pretrained("/models/pixart-sigma-1024", dtype=torch.float16, device="cuda")
    images = pixart.generate('a stone castle AND NOT fog', n=4, steps=20, scheduler=pixart.scheduler)
    # or by hand:
    fn = compdiff.compose(pixart.denoiser, pixart.encoder, "a castle AND NOT fog", guidance_scale=4.5)
    x_T = compdiff.randn((4, *pixart.latent_shape), compdiff.generators([0, 1, 2, 3]))
    latents = compdiff.sample_ddim(fn, x_T, pixart.schedule, pixart.timesteps(20))

What the pieces are:

* condition (``T5PromptEncoder``): a dict {"tokens": (K, L, D) T5 encoder states, "mask": (K, L) the
  tokenizer's attention mask}, built exactly as ``PixArtSigmaPipeline.encode_prompt`` builds one prompt
  with ``clean_caption=False`` (the prompt lower-cased and stripped, padded to L = ``max_sequence_length``,
  default 300, the T5 encoder called with the mask). The null condition ∅ is the empty prompt "" with its
  own mask, which is what the pipeline uses as the negative prompt for classifier-free guidance.
* denoiser (``PixArtDenoiser``): the DiT ``PixArtTransformer2DModel``, called ONCE per step with every
  row of every concept and ∅ (B·(K+1) rows; composition batches the dict field by field), with
  ``encoder_attention_mask`` = the mask and ``added_cond_kwargs`` {"resolution": None, "aspect_ratio":
  None} (PixArt-Σ has no micro-conditions). A transformer that learns σ predicts 2·C channels: the first
  C are ε, as the pipeline takes them. A v-prediction scheduler config is converted to ε here.
* schedule: ``NoiseSchedule.from_diffusers(scheduler)`` (VP; the released model ships a
  DPMSolverMultistepScheduler, which ``sample_latents(scheduler=backend.scheduler)`` runs step for step).
* decode: latents / scaling_factor through the VAE.

PixArt-α (PixArtAlphaPipeline) is refused: its 1024 px model conditions on resolution and aspect ratio
and it reads 120 T5 tokens, which this adapter does not reproduce. compdiff never downloads and never
unpickles: a folder is loaded with ``local_files_only`` and safetensors only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from compdiff.backends.base import VPBackend, to_eps, vp_schedule_of, warn_truncated
from compdiff.backends.components import (class_detector, components_of, load_folder, open_dtype, read_index,
                                          to_device)
from compdiff.backends.offload import execution_device
from compdiff.backends.registry import OpenedModel, register_backend
from compdiff.errors import InputError
from compdiff.schedule import NoiseSchedule

FAMILY = "pixart"
PIXART_SIGMA = "PixArtSigmaPipeline"
PIXART_ALPHA = "PixArtAlphaPipeline"
PIPELINE_SCALE = 4.5  # PixArtSigmaPipeline's default guidance_scale
DEFAULT_STEPS = 20  # PixArtSigmaPipeline's default num_inference_steps
MAX_SEQUENCE_LENGTH = 300  # PixArtSigmaPipeline's default T5 window
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
ALPHA_MESSAGE = (f"{PIXART_ALPHA} is not supported: PixArt-α conditions its 1024 px model on resolution and aspect "
                 f"ratio and reads 120 T5 tokens, which compdiff does not reproduce; compdiff opens PixArt-Σ "
                 f"({PIXART_SIGMA}) only")


def _refuse_alpha(class_name: str) -> None:
    if class_name == PIXART_ALPHA:
        raise InputError(ALPHA_MESSAGE)


class T5PromptEncoder:
    """ConceptEncoder over PixArt's T5: encode(prompts) -> {"tokens": (K, L, D), "mask": (K, L) int64}, each
    row what ``PixArtSigmaPipeline.encode_prompt(clean_caption=False)`` gives for that prompt; null() -> the
    empty prompt's (1 row, cached). Prompts longer than L tokens warn (PromptTruncatedWarning)."""

    def __init__(self, tokenizer: Any, text_encoder: torch.nn.Module,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        if max_sequence_length < 1:
            raise InputError(f"max_sequence_length must be >= 1, got {max_sequence_length}")
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.max_sequence_length = int(max_sequence_length)
        self._null: dict[str, Tensor] | None = None

    @torch.no_grad()
    def encode(self, concepts: Sequence[str]) -> dict[str, Tensor]:
        prompts = [str(c).lower().strip() for c in concepts]  # the pipeline's _text_preprocessing
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        warn_truncated(self.tokenizer, prompts, self.max_sequence_length, "the T5 text encoder")
        inputs = self.tokenizer(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = execution_device(self.text_encoder)
        mask = inputs.attention_mask.to(device)
        tokens = self.text_encoder(inputs.input_ids.to(device), attention_mask=mask)[0]
        return {"tokens": tokens.to(self.text_encoder.dtype), "mask": mask}

    def null(self) -> dict[str, Tensor]:
        if self._null is None:
            self._null = self.encode([""])
        return self._null


class PixArtDenoiser:
    """Denoiser over a ``PixArtTransformer2DModel``: ``(x (B, C, h, w), t (B,) timesteps, cond {"tokens",
    "mask"} of B rows) -> eps (B, C, h, w)`` in x's dtype. The transformer runs in its own dtype, on its
    execution device; of a learned-σ output (2·C channels) the first C are kept; a v- or x0-prediction is
    converted to eps."""

    def __init__(self, transformer: torch.nn.Module, schedule: NoiseSchedule, prediction_type: str = "epsilon") -> None:
        self.transformer = transformer
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.channels = int(transformer.config.in_channels)

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        device, dtype = execution_device(self.transformer), next(self.transformer.parameters()).dtype
        t = torch.as_tensor(t)
        timestep = t.to(device).reshape(-1).expand(x.shape[0])
        out = self.transformer(x.to(device, dtype), encoder_hidden_states=cond["tokens"].to(device, dtype),
                               encoder_attention_mask=cond["mask"].to(device), timestep=timestep,
                               added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        if out.shape[1] == 2 * self.channels:
            out = out[:, :self.channels]
        return to_eps(self.schedule, self.prediction_type, x, out.to(x.device, x.dtype), t)


class PixArtBackend(VPBackend):
    """A diffusers PixArtSigmaPipeline as compdiff parts (see the module docstring).

    Attributes: denoiser (PixArtDenoiser), encoder (T5PromptEncoder), schedule (NoiseSchedule), scheduler
    (the pipeline's, for ``sample_latents(scheduler=...)``), prediction_type, latent_shape (C, h, w),
    vae_scale_factor, patch_size, device (where the transformer runs), dtype; the modules transformer, vae,
    text_encoder, tokenizer; offload_hooks (accelerate's hooks after :meth:`enable_cpu_offload`, else []).
    """

    family = FAMILY
    denoiser_module = "transformer"
    default_scale = PIPELINE_SCALE
    default_steps = DEFAULT_STEPS  # sampling defaults: ddim, 20 steps, "trailing" spacing, scale 4.5

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module,
                 tokenizer: Any, scheduler: Any, *, height: int | None = None, width: int | None = None,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        cfg = transformer.config
        out = cfg.out_channels if cfg.out_channels is not None else cfg.in_channels
        if out not in (cfg.in_channels, 2 * cfg.in_channels):
            raise InputError(f"the transformer takes {cfg.in_channels} channels but predicts {out}: only "
                             "text-to-image PixArt transformers are supported")
        caption = getattr(cfg, "caption_channels", None)
        hidden = getattr(text_encoder.config, "d_model", None)
        if caption is not None and hidden is not None and caption != hidden:
            raise InputError(f"text encoder width {hidden} does not match the transformer's caption_channels {caption}")
        self.transformer, self.vae, self.text_encoder, self.tokenizer, self.scheduler = (
            transformer, vae, text_encoder, tokenizer, scheduler)
        self.schedule = vp_schedule_of(scheduler)
        self.prediction_type: str = scheduler.config.get("prediction_type", "epsilon")
        self.patch_size = int(cfg.patch_size)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.denoiser = PixArtDenoiser(transformer, self.schedule, self.prediction_type)
        self.encoder = T5PromptEncoder(tokenizer, text_encoder, max_sequence_length)
        self.latent_shape: tuple[int, int, int] = self.latent_shape_for(height, width)
        self.offload_hooks: list[Any] = []

    @classmethod
    def from_pretrained(cls, path_or_pipeline: str | os.PathLike | Any, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu", height: int | None = None, width: int | None = None,
                        max_sequence_length: int = MAX_SEQUENCE_LENGTH, cpu_offload: bool = False) -> PixArtBackend:
        """From a local pipeline folder (local_files_only, safetensors; never downloads, never unpickles) or a
        built PixArtSigmaPipeline (its modules moved to ``device``/``dtype`` in place). cpu_offload: the modules
        stay in CPU memory and each runs on ``device`` only while it is used (:meth:`enable_cpu_offload`).
        InputError for a path that is not a local folder, PixArt-α, or another pipeline class."""
        if isinstance(path_or_pipeline, (str, os.PathLike)):
            index = read_index(Path(path_or_pipeline).expanduser())
            _refuse_alpha(str((index or {}).get("_class_name", "")))
            parts = load_folder(path_or_pipeline, PIXART_SIGMA, "PixArt-Σ", REQUIRED)
        else:
            _refuse_alpha(type(path_or_pipeline).__name__)
            parts = components_of(path_or_pipeline, PIXART_SIGMA, "PixArt-Σ", REQUIRED)
        for name in ("transformer", "vae", "text_encoder"):
            parts[name] = to_device(parts[name], "cpu" if cpu_offload else device, dtype)
        backend = cls(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                      parts["scheduler"], height=height, width=width, max_sequence_length=max_sequence_length)
        if cpu_offload:
            backend.enable_cpu_offload(device)
        return backend

    def _offload_modules(self) -> tuple[torch.nn.Module | None, ...]:
        return (self.text_encoder, self.transformer, self.vae)

    def _info(self) -> dict[str, Any]:
        return {**super()._info(), "max_sequence_length": self.encoder.max_sequence_length}


def _open(path: Path, *, device: torch.device, dtype: str = "auto", bf16: bool = False,
          max_sequence_length: int = MAX_SEQUENCE_LENGTH, cpu_offload: bool = False) -> OpenedModel:
    """Weights in bfloat16 on a GPU (T5 overflows in float16) and float32 on the CPU unless ``dtype`` names
    one (bf16, the world models' autocast flag, does not apply). cpu_offload: the modules stay in CPU memory
    and run on ``device`` one at a time."""
    backend = PixArtBackend.from_pretrained(path, dtype=open_dtype(device, dtype), device=device,
                                            max_sequence_length=max_sequence_length, cpu_offload=cpu_offload)
    return backend.opened(str(path))


register_backend(FAMILY, class_detector("PixArt"), _open)

__all__ = ["PixArtBackend", "PixArtDenoiser", "T5PromptEncoder"]
