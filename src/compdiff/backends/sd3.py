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

The helpers and :class:`FlowBackend` below are shared with ``flux.py`` (Flux.1).
"""
from __future__ import annotations

import importlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from compdiff.backends.diffusers import vae_decode
from compdiff.backends.one_call import seed_list, seeded_start
from compdiff.backends.offload import RunsOnDenoiser, enable_model_cpu_offload, execution_device
from compdiff.backends.registry import OpenedModel, register_backend
from compdiff.backends.scheduler_loop import sample_with_scheduler
from compdiff.backends.sd_text import PromptTruncatedWarning
from compdiff.compose import Mode, Negation, compose
from compdiff.regions import Masks, RegionMode
from compdiff.errors import InputError
from compdiff.expr import Expr
from compdiff.sampling import Callback, get_sampler, sampler_options
from compdiff.schedule import FlowSchedule, Spacing

FAMILY = "sd3"
SD3_PIPELINE = "StableDiffusion3Pipeline"
PIPELINE_SCALE = 7.0  # StableDiffusion3Pipeline's default guidance_scale
DEFAULT_STEPS = 28  # StableDiffusion3Pipeline's default num_inference_steps
MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default T5 window
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
OPTIONAL = ("text_encoder_3", "tokenizer_3")
#: scheduler options that change the σ sequence in ways a FlowSchedule (shift, t_min) does not express
UNREPRODUCED = ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                "stochastic_sampling")


# =====================================================================================================
# Shared by the flow-matching families (sd3.py, flux.py)
# =====================================================================================================
def read_index(root: Path) -> dict[str, Any] | None:
    """model_index.json of ``root`` as a dict, or None when there is none or it is not a JSON object."""
    try:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return index if isinstance(index, dict) else None


def class_detector(prefix: str) -> Callable[[Path], bool]:
    """A registry detector: the folder's model_index.json ``_class_name`` starts with ``prefix``. Variants
    of the family (img2img, ControlNet, ...) are claimed too, so that opening one says it is not supported."""
    def detect(path: Path) -> bool:
        index = read_index(path)
        name = index.get("_class_name") if index else None
        return isinstance(name, str) and name.startswith(prefix)
    return detect


def refuse_variant(found: str, supported: str, what: str) -> None:
    """InputError unless ``found`` is the supported text-to-image pipeline class."""
    if found != supported:
        raise InputError(f"{found} is not supported: compdiff composes {what} text-to-image pipelines only "
                         f"({supported}); image-to-image, inpainting, ControlNet, IP-Adapter and other variants "
                         "are not supported")


def _refuse_ip_adapter(image_encoder: Any, where: str) -> None:
    if image_encoder is not None:
        raise InputError(f"{where} has an image encoder ({image_encoder}): IP-Adapter pipelines are not supported "
                         "by compdiff (composition is over text prompts only); save the pipeline without it")


def load_components(path: str | os.PathLike, supported: str, what: str, required: Sequence[str],
                    optional: Sequence[str] = ()) -> dict[str, Any]:
    """The named components of a local pipeline folder (local_files_only, safetensors only; never unpickles).
    Optional components absent or null in model_index.json come back as None."""
    from compdiff.backends.diffusers import _missing_model_message
    from compdiff.models import _refuse_pickles

    root = Path(path).expanduser()
    if not (root / "model_index.json").is_file():
        raise InputError(_missing_model_message(str(path)))
    index = read_index(root)
    if index is None:
        raise InputError(f"{root / 'model_index.json'}: not a readable JSON object")
    refuse_variant(str(index.get("_class_name", "an unknown pipeline")), supported, what)
    image_encoder = index.get("image_encoder")
    _refuse_ip_adapter(image_encoder[-1] if isinstance(image_encoder, list) and image_encoder else None, str(root))

    def present(name: str) -> bool:
        entry = index.get(name) or [None, None]
        return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None and entry[1] is not None

    missing = [name for name in required if not present(name) or not (root / name).is_dir()]
    if missing:
        raise InputError(f"{root} ({supported}) is incomplete: missing {', '.join(missing)}")
    components: dict[str, Any] = {}
    for name in (*required, *optional):
        if not present(name):
            components[name] = None
            continue
        if not (root / name).is_dir():
            raise InputError(f"{root}: model_index.json lists {name} but there is no {name}/ folder")
        _refuse_pickles(root / name)
        library, class_name = index[name]
        try:
            cls = getattr(importlib.import_module(library), class_name)
        except (ImportError, AttributeError) as err:
            raise InputError(f"{root}: cannot load {name}: {library}.{class_name} is not available ({err})") from err
        if name == "scheduler":
            kwargs: dict[str, Any] = {}
        elif name.startswith("tokenizer"):
            kwargs = {"local_files_only": True}
        else:
            kwargs = {"local_files_only": True, "use_safetensors": True}
        try:
            components[name] = cls.from_pretrained(str(root / name), **kwargs)
        except (OSError, ValueError) as err:
            raise InputError(f"{root}: cannot load {name} ({err}); compdiff loads local safetensors only and "
                             "does not download models") from err
    return components


def components_of(pipeline: Any, supported: str, what: str, required: Sequence[str],
                  optional: Sequence[str] = ()) -> dict[str, Any]:
    """The named components of a built pipeline object (InputError for another pipeline class)."""
    refuse_variant(type(pipeline).__name__, supported, what)
    parts = dict(getattr(pipeline, "components", {}))
    _refuse_ip_adapter(parts.get("image_encoder"), supported)
    missing = [name for name in required if parts.get(name) is None]
    if missing:
        raise InputError(f"this {supported} is incomplete: missing {', '.join(missing)}")
    return {name: parts.get(name) for name in (*required, *optional)}


def calculate_shift(image_seq_len: int, config: Mapping[str, Any], max_shift_default: float) -> float:
    """diffusers' ``calculate_shift``: mu, linear in the image sequence length between
    (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift) of the scheduler config."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", max_shift_default)
    m = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * m + (base_shift - m * base_len)


def flow_schedule_of(scheduler: Any, mu: float | None) -> FlowSchedule:
    """The FlowSchedule of a flow-matching scheduler: shift = exp(mu) ("exponential" dynamic shifting;
    mu itself for "linear") when the config uses dynamic shifting, else its shift; t_min = sigma_min.
    For diffusers' exponential time shift e^mu / (e^mu + (1/σ − 1)) = s·σ / (1 + (s − 1)·σ) with s = e^mu."""
    cfg = scheduler.config
    if cfg.get("use_dynamic_shifting", False):
        if mu is None:
            raise InputError("this scheduler uses dynamic shifting: mu is needed")
        shift = math.exp(mu) if cfg.get("time_shift_type", "exponential") == "exponential" else mu
    elif cfg.get("use_flow_sigmas", False):  # DPM-Solver / UniPC / ... in flow mode
        shift = cfg.get("flow_shift", 1.0)
    else:
        shift = float(getattr(scheduler, "shift", cfg.get("shift", 1.0)))
    t_min = float(getattr(scheduler, "sigma_min", 1.0 / cfg.get("num_train_timesteps", 1000)))
    try:
        return FlowSchedule(shift=float(shift), t_min=t_min)
    except ValueError as err:
        raise InputError(f"cannot use the scheduler {type(scheduler).__name__}: {err}") from err


def check_scheduler(scheduler: Any) -> None:
    """A flow-matching scheduler is needed; options that compdiff's FlowSchedule does not reproduce warn."""
    from compdiff.backends.scheduler_loop import is_flow_scheduler

    if not is_flow_scheduler(scheduler):
        raise InputError(f"the pipeline's scheduler {type(scheduler).__name__} is not a flow-matching scheduler")
    used = [name for name in UNREPRODUCED if scheduler.config.get(name)]
    if used:
        warnings.warn(f"scheduler options {', '.join(used)} are not reproduced by compdiff's samplers (a FlowSchedule "
                      "has a shift and t_min only); pass scheduler=backend.scheduler to sample with them", stacklevel=3)


def warn_truncated(tokenizer: Any, prompts: Sequence[str], max_length: int, what: str) -> None:
    """PromptTruncatedWarning for each prompt longer than ``max_length`` tokens (specials included)."""
    for prompt in prompts:
        ids = tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
        dropped = len(ids) - max_length
        if dropped > 0:
            warnings.warn(f"prompt {prompt!r} is {len(ids)} tokens long but {what} reads at most {max_length}: "
                          f"the last {dropped} tokens were dropped", PromptTruncatedWarning, stacklevel=4)


def to_device(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` on ``device`` in ``dtype`` (cast only when it differs), in eval mode."""
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype=dtype)
    return module.to(device=device).eval()


class FlowBackend(RunsOnDenoiser):
    """What the flow-matching families share: shapes, timesteps, decoding, one-call sampling, OpenedModel.

    Subclasses set transformer, vae, scheduler, denoiser, encoder, vae_scale_factor, latent_shape and
    schedule, and define ``latent_shape_for``, ``_mu`` (dynamic-shift mu of a latent shape, None when the
    scheduler does not shift dynamically), ``_scheduler_options`` and ``_offload_modules`` (the modules in
    the order a run uses them). Class attributes: family, default_scale, spacing (the FlowSchedule spacing
    that reproduces the pipeline's σ), default_steps.
    """

    family = ""
    denoiser_module = "transformer"
    default_scale = 1.0
    spacing: Spacing = "linspace"
    default_steps = DEFAULT_STEPS
    transformer: torch.nn.Module
    vae: torch.nn.Module
    scheduler: Any
    denoiser: Any
    encoder: Any
    vae_scale_factor: int
    latent_shape: tuple[int, int, int]
    schedule: FlowSchedule

    # ---- model CPU offload ------------------------------------------------------------------------
    def _offload_modules(self) -> tuple[torch.nn.Module | None, ...]:
        raise NotImplementedError

    def enable_cpu_offload(self, device: torch.device | str = "cuda") -> None:
        """accelerate's model CPU offload (diffusers' ``enable_model_cpu_offload``; compdiff.backends.offload):
        the text encoders, the transformer and the VAE, in that order, each held in CPU memory and moved to
        ``device`` only while it runs. ``offload_hooks`` keeps accelerate's hooks."""
        self.offload_hooks = enable_model_cpu_offload(self._offload_modules(), device, self.transformer)

    # ---- shapes, schedules, timesteps -----------------------------------------------------------
    def latent_shape_for(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        raise NotImplementedError

    def _mu(self, shape: Sequence[int]) -> float | None:
        raise NotImplementedError

    def _scheduler_options(self, steps: int, shape: Sequence[int]) -> dict[str, Any]:
        raise NotImplementedError

    def schedule_for(self, shape: Sequence[int]) -> FlowSchedule:
        """The FlowSchedule for latents of ``shape`` (C, h, w): the shift depends on it under dynamic shifting."""
        return flow_schedule_of(self.scheduler, self._mu(shape))

    def timesteps(self, num_steps: int, height: int | None = None, width: int | None = None) -> Tensor:
        """num_steps descending times σ in (0, 1] (float64): the pipeline scheduler's own σ for this size."""
        shape = self.latent_shape if height is None and width is None else self.latent_shape_for(height, width)
        try:
            return self.schedule_for(shape).timesteps(num_steps, self.spacing)
        except ValueError as err:
            raise InputError(str(err)) from err

    # ---- decoding -----------------------------------------------------------------------------------
    def decode(self, latents: Tensor, batch_size: int = 1) -> Tensor:
        """VAE decode: latents (N, C, h, w) -> images (N, 3, H, W), float32 on the CPU, in [-1, 1]
        (z = latents / scaling_factor + shift_factor where the VAE has one), batch_size at a time."""
        return vae_decode(self.vae, latents, batch_size)

    # ---- as compdiff.open_model sees it ----------------------------------------------------------------
    def _info(self) -> dict[str, Any]:
        return {"timestep_spacing": self.spacing, "scheduler": self.scheduler, "run_scheduler": self.run_scheduler}

    def run_scheduler(self, fn: Any, x_T: Tensor, scheduler: Any, steps: int, generator: Any = None,
                      callback: Any = None, eta: float = 0.0) -> Tensor:
        """``sample_with_scheduler`` for a composed velocity ``fn``, with this family's timestep options
        (Flux: its sigmas and dynamic shift for x_T's size)."""
        return sample_with_scheduler(fn, x_T, scheduler, steps, generator=generator, callback=callback, eta=eta,
                                     prediction="velocity",
                                     timestep_options=self._scheduler_options(steps, tuple(x_T.shape[1:])))

    def opened(self, name: str) -> OpenedModel:
        return OpenedModel(self.denoiser, self.encoder, self.schedule, tuple(self.latent_shape), self.decode,
                           self.family, name, self.default_scale,
                           sampling={"sampler": "euler", "steps": self.default_steps}, info=self._info())

    # ---- one-call sampling --------------------------------------------------------------------------------
    def sample_latents(self, expr: Expr | str, *, n: int = 1, steps: int | None = None,
                       guidance_scale: float | None = None, seeds: Sequence[int] | None = None,
                       scheduler: Any = None, sampler: str = "euler", eta: float = 0.0, mode: Mode = "sum",
                       rescale: float = 0.0, negation: Negation = "plain", max_batch: int | None = None,
                       height: int | None = None, width: int | None = None,
                       callback: Callback | None = None, masks: Masks | None = None, feather: float = 0.0,
                       region_mode: RegionMode = "sum") -> Tensor:
        """Latents (n, C, h, w) for ``expr``: one seed per image (default 0..n-1; image i depends only on
        seeds[i]). steps: default ``default_steps``; guidance_scale: default ``default_scale``. With
        scheduler None, compdiff's ``sampler`` (default "euler", FlowMatchEulerDiscreteScheduler step for
        step) on ``schedule_for(shape)`` with ``timesteps(steps)``; else the given diffusers flow-matching
        scheduler via :func:`sample_with_scheduler` (the pipeline's own one: ``scheduler=backend.scheduler``).
        eta goes to samplers that take it (ddim). Prompts are encoded once. Regions take masks, feather
        and region_mode as in :func:`compdiff.compose`."""
        seeds = seed_list(n, seeds)
        steps = self.default_steps if steps is None else int(steps)
        scale = self.default_scale if guidance_scale is None else guidance_scale
        fn = compose(self.denoiser, self.encoder, expr, guidance_scale=scale, mode=mode, rescale=rescale,
                     max_batch=max_batch, negation=negation, masks=masks, feather=feather, region_mode=region_mode)
        shape = self.latent_shape if height is None and width is None else self.latent_shape_for(height, width)
        fn, x_T, gens = seeded_start(fn, shape, seeds, self.device)
        if scheduler is not None:
            return sample_with_scheduler(fn, x_T, scheduler, steps, generator=gens, callback=callback, eta=eta,
                                         prediction="velocity", timestep_options=self._scheduler_options(steps, shape))
        options = {"eta": eta} if "eta" in sampler_options(sampler) else {}
        schedule = self.schedule_for(shape)
        try:
            ts = schedule.timesteps(steps, self.spacing)
        except ValueError as err:
            raise InputError(str(err)) from err
        return get_sampler(sampler)(fn, x_T, schedule, ts, generator=gens, callback=callback, **options)

    def generate(self, expr: Expr | str, **kwargs: Any) -> Tensor:
        """Images (n, 3, H, W) in [-1, 1]: ``decode(sample_latents(expr, **kwargs))``."""
        return self.decode(self.sample_latents(expr, **kwargs))


def open_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """"auto": bfloat16 on a GPU (SD3 and Flux are trained and shipped in bf16; Flux overflows in float16),
    float32 on the CPU; else the named torch dtype."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


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
    spacing: Spacing = "linspace"
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
        check_scheduler(scheduler)
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
            parts = load_components(path_or_pipeline, SD3_PIPELINE, "Stable Diffusion 3", REQUIRED, OPTIONAL)
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

    def latent_shape_for(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(C, height/f, width/f); None = the transformer's sample_size·f (1024 for SD3). Multiples of f·patch."""
        size = self.transformer.config.sample_size
        f, step = self.vae_scale_factor, self.vae_scale_factor * self.patch_size
        height, width = height or size * f, width or size * f
        if height % step or width % step:
            raise InputError(f"height and width must be multiples of {step}, got {height}x{width}")
        return (int(self.transformer.config.in_channels), height // f, width // f)

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
