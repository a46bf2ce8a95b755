"""What every pipeline family shares, written once: the VP base and the flow base.

:class:`PipelineBackend` holds shapes, decoding, the OpenedModel view and one-call sampling;
``sample_latents`` and ``generate`` are :func:`compdiff.generate.generate` on that view (the one
generation path), so a backend's images are the CLI's, the web app's and Python's.

:class:`VPBackend` (SD 1.x/2.x, SDXL, PixArt-Σ): a ``NoiseSchedule`` from the pipeline's scheduler,
its own timesteps for compdiff's samplers, and :func:`to_eps`, the one v/x0 -> ε conversion of their
denoisers. :class:`FlowBackend` (SD3, Flux): a ``FlowSchedule`` whose shift may depend on the size,
the scheduler checks, and the timestep options a family passes to a diffusers flow scheduler.

A family file subclasses one of them and holds only what is its own: its encoder, denoiser, checks,
defaults and registration.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from compdiff.backends.offload import RunsOnDenoiser, enable_model_cpu_offload, execution_device, release
from compdiff.backends.scheduler_loop import is_flow_scheduler, sample_with_scheduler
from compdiff.backends.sd_text import PromptTruncatedWarning
from compdiff.errors import InputError
from compdiff.expr import Expr
from compdiff.generate import OpenedModel, Spacing
from compdiff.schedule import FlowSchedule, NoiseSchedule, Schedule

#: scheduler options that change the σ sequence in ways a FlowSchedule (shift, t_min) does not express
UNREPRODUCED = ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                "stochastic_sampling")


def seed_list(n: int, seeds: Sequence[int] | None) -> list[int]:
    """The seeds of n images: 0..n-1 by default; a list of another length is an InputError."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a whole number >= 1, got {n!r}")
    out = list(range(n)) if seeds is None else list(seeds)
    if len(out) != n:
        raise InputError(f"got {len(out)} seeds for {n} images")
    return out


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


def warn_truncated(tokenizer: Any, prompts: Sequence[str], max_length: int, what: str) -> None:
    """PromptTruncatedWarning for each prompt longer than ``max_length`` tokens (specials included)."""
    for prompt in prompts:
        ids = tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
        dropped = len(ids) - max_length
        if dropped > 0:
            warnings.warn(f"prompt {prompt!r} is {len(ids)} tokens long but {what} reads at most {max_length}: "
                          f"the last {dropped} tokens were dropped", PromptTruncatedWarning, stacklevel=4)


class PipelineBackend(RunsOnDenoiser):
    """Shapes, decoding, the OpenedModel view and one-call sampling of a pipeline family.

    Subclasses set vae, scheduler, denoiser, encoder, schedule, vae_scale_factor, latent_shape and the
    network named by ``denoiser_module``, and the class attributes family, default_scale, default_sampler,
    default_steps (None: no recommendation, the OpenedModel falls back to ddim / 50) and spacing (the
    default timestep spacing of compdiff's samplers, generate's).
    """

    family = ""
    default_scale = 1.0
    default_sampler = "ddim"
    default_steps: int | None = None
    spacing: Spacing = "trailing"
    patch_size = 1
    vae: torch.nn.Module
    scheduler: Any
    denoiser: Any
    encoder: Any
    schedule: Schedule
    vae_scale_factor: int
    latent_shape: tuple[int, int, int]
    offload_hooks: list[Any]

    # ---- model CPU offload ------------------------------------------------------------------------
    def _offload_modules(self) -> tuple[torch.nn.Module | None, ...]:
        """The modules in the order a run uses them (text encoders, denoiser, VAE)."""
        raise NotImplementedError

    def enable_cpu_offload(self, device: torch.device | str = "cuda") -> None:
        """accelerate's model CPU offload (diffusers' ``enable_model_cpu_offload``; compdiff.backends.offload):
        the text encoders, the denoiser and the VAE, in that order, each held in CPU memory and moved to
        ``device`` only while it runs. ``offload_hooks`` keeps accelerate's hooks."""
        self.offload_hooks = enable_model_cpu_offload(self._offload_modules(), device,
                                                      getattr(self, self.denoiser_module))

    # ---- shapes ----------------------------------------------------------------------------------------
    def _default_pixels(self) -> tuple[int, int]:
        """(height, width) in pixels when none is given: the denoiser's sample_size·f."""
        size = getattr(self, self.denoiser_module).config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    def _size_multiple(self) -> int:
        return self.vae_scale_factor * self.patch_size

    def _latent_channels(self) -> int:
        return int(getattr(self, self.denoiser_module).config.in_channels)

    def latent_shape_for(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(C, height/f, width/f) with f the VAE's scale factor; None = the default size. Height and width
        must be multiples of f·patch (InputError)."""
        h0, w0 = self._default_pixels()
        height, width, step, f = height or h0, width or w0, self._size_multiple(), self.vae_scale_factor
        if height % step or width % step:
            raise InputError(f"height and width must be multiples of {step}, got {height}x{width}")
        return (self._latent_channels(), height // f, width // f)

    def schedule_for(self, shape: Sequence[int]) -> Schedule:
        """The schedule for latents of ``shape`` (flow models shift it by size)."""
        return self.schedule

    def encoder_for(self, height: int | None = None, width: int | None = None) -> Any:
        """The encoder for images of height x width (SDXL's conditions carry the size)."""
        return self.encoder

    # ---- decoding and diffusers schedulers --------------------------------------------------------------
    def decode(self, latents: Tensor, batch_size: int = 1) -> Tensor:
        """VAE decode: latents (N, C, h, w) -> images (N, 3, H, W), float32 on the CPU, in [-1, 1]."""
        return vae_decode(self.vae, latents, batch_size)

    def run_scheduler(self, fn: Any, x_T: Tensor, scheduler: Any, steps: int, generator: Any = None,
                      callback: Any = None, eta: float = 0.0) -> Tensor:
        """A diffusers scheduler's loop (:func:`sample_with_scheduler`) for this family's composed ``fn``."""
        return sample_with_scheduler(fn, x_T, scheduler, steps, generator=generator, callback=callback, eta=eta)

    # ---- as compdiff.open_model and compdiff.generate see it ---------------------------------------------
    def _steps_offset(self) -> int:
        return 0

    def _info(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "run_scheduler": self.run_scheduler}

    def opened(self, name: str, height: int | None = None, width: int | None = None) -> OpenedModel:
        """This backend as an OpenedModel for images of height x width (default: the backend's size)."""
        sized = height is not None or width is not None
        shape = self.latent_shape_for(height, width) if sized else tuple(self.latent_shape)
        sampling = {} if self.default_steps is None else {"sampler": self.default_sampler, "steps": self.default_steps}
        return OpenedModel(self.denoiser, self.encoder_for(height, width) if sized else self.encoder,
                           self.schedule_for(shape), shape, self.decode, self.family, name, self.default_scale,
                           sampling=sampling, info=self._info(), device=self.device, spacing=self.spacing,
                           steps_offset=self._steps_offset(), scheduler=self.scheduler,
                           run_scheduler=self.run_scheduler)

    def sample_latents(self, expr: Expr | str, *, n: int = 1, seeds: Sequence[int] | None = None,
                       height: int | None = None, width: int | None = None, **options: Any) -> Tensor:
        """Latents (n, C, h, w) for ``expr`` through :func:`compdiff.generate.sample_latents`: one seed per
        image (default 0..n-1; image i depends only on seeds[i]); options as :func:`compdiff.generate`
        (sampler, steps, spacing, guidance_scale, scheduler ("pipeline" = the pipeline's own), eta,
        corrector, negation, mode, rescale, max_batch, masks, feather, region_mode, callback); the
        defaults are this family's (:meth:`opened`)."""
        from compdiff.generate import sample_latents

        return sample_latents(self.opened(self.family, height, width), expr, seed_list(n, seeds), **options)

    def generate(self, expr: Expr | str, *, n: int = 1, seeds: Sequence[int] | None = None,
                 height: int | None = None, width: int | None = None, **options: Any) -> Tensor:
        """Images (n, 3, H, W) in [-1, 1] on the CPU: :func:`compdiff.generate` on :meth:`opened`."""
        from compdiff.generate import generate

        return generate(self.opened(self.family, height, width), expr, seed_list(n, seeds), **options).images


# =====================================================================================================
# Variance-preserving families (SD 1.x/2.x, SDXL, PixArt-Σ)
# =====================================================================================================
def vp_schedule_of(scheduler: Any) -> NoiseSchedule:
    """The NoiseSchedule of a VP diffusers scheduler; InputError for a flow-matching one or a table that
    compdiff cannot use (e.g. zero terminal SNR)."""
    if is_flow_scheduler(scheduler):
        raise InputError(f"the pipeline's scheduler {type(scheduler).__name__} is a flow-matching scheduler: this "
                         "family is a variance-preserving (ε / v-prediction) model")
    try:
        return NoiseSchedule.from_diffusers(scheduler)
    except ValueError as err:  # e.g. a zero-terminal-SNR schedule (a_T = 0)
        raise InputError(f"cannot use the scheduler {type(scheduler).__name__}: {err}") from err


def to_eps(schedule: NoiseSchedule, prediction_type: str, x: Tensor, out: Tensor, t: Tensor) -> Tensor:
    """ε from a VP network's output ``out`` in ``prediction_type`` ("epsilon", "v_prediction", "sample"),
    the one conversion of every VP denoiser (schedule.eps_from_prediction). A fractional t (Euler
    schedulers with "linspace" spacing) is interpolated by the schedule."""
    if prediction_type == "epsilon":
        return out
    return schedule.eps_from_prediction(x, out, torch.as_tensor(t).detach().cpu().double(), prediction_type)


class UNetDenoiser:
    """Denoiser over a ``UNet2DConditionModel``.

    ``(x (B, C, h, w) latents, t (B,) timesteps, cond (B, L, D) text embeddings) -> eps (B, C, h, w)``
    in x's dtype. The UNet runs in its own dtype, on its execution device (where its offload hook
    runs it under cpu_offload); a v- or x0-prediction output is converted to eps by :func:`to_eps`.
    Shared by SD 1.x/2.x and SDXL (whose subclass adds the pooled embeddings and time ids).
    """

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule, prediction_type: str) -> None:
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type

    def _unet_kwargs(self, cond: Any, device: torch.device, dtype: torch.dtype) -> dict:
        """The UNet's conditioning keyword arguments (SDXL's subclass adds the pooled embeddings and time ids)."""
        return {"encoder_hidden_states": cond.to(device, dtype)}

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        device, dtype = execution_device(self.unet), next(self.unet.parameters()).dtype
        out = self.unet(x.to(device, dtype), t.to(device), **self._unet_kwargs(cond, device, dtype),
                        return_dict=False)[0].to(x.device, x.dtype)
        return to_eps(self.schedule, self.prediction_type, x, out, t)


class VPBackend(PipelineBackend):
    """A VP pipeline: ``schedule`` from its scheduler, ``prediction_type``, and :meth:`timesteps` spaced as
    the scheduler config says (what the diffusers pipeline itself runs). compdiff's samplers default to
    "trailing" spacing (``spacing``): the first step starts at pure noise, t = T − 1."""

    prediction_type: str

    def _pipeline_spacing(self) -> str:
        return self.scheduler.config.get("timestep_spacing", "leading")

    def _steps_offset(self) -> int:
        return int(self.scheduler.config.get("steps_offset", 0))

    def timesteps(self, num_steps: int) -> Tensor:
        """num_steps descending timesteps spaced as the pipeline's scheduler config says (timestep_spacing,
        steps_offset): ``generate(spacing=...)`` with that spacing runs these."""
        spacing = self._pipeline_spacing()
        offset = self._steps_offset() if spacing == "leading" else 0
        try:
            return self.schedule.timesteps(num_steps, spacing, offset)
        except ValueError as err:
            raise InputError(str(err)) from err

    def _info(self) -> dict[str, Any]:
        return {**super()._info(), "timestep_spacing": self._pipeline_spacing()}


# =====================================================================================================
# Flow-matching families (SD3, Flux)
# =====================================================================================================
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


def check_flow_scheduler(scheduler: Any) -> None:
    """A flow-matching scheduler is needed; options that compdiff's FlowSchedule does not reproduce warn."""
    if not is_flow_scheduler(scheduler):
        raise InputError(f"the pipeline's scheduler {type(scheduler).__name__} is not a flow-matching scheduler")
    used = [name for name in UNREPRODUCED if scheduler.config.get(name)]
    if used:
        warnings.warn(f"scheduler options {', '.join(used)} are not reproduced by compdiff's samplers (a FlowSchedule "
                      "has a shift and t_min only); pass scheduler='pipeline' to sample with them", stacklevel=3)


class FlowBackend(PipelineBackend):
    """A rectified-flow pipeline: compdiff composes velocities (the ε rule, docs/operators.md) and samples
    with Euler by default, on the pipeline's own σ (``spacing``: SD3 "linspace", Flux "trailing").
    Subclasses define ``_mu`` (dynamic-shift mu of a latent shape, None without dynamic shifting) and
    ``_scheduler_options`` (what the pipeline passes to ``set_timesteps``)."""

    denoiser_module = "transformer"
    default_sampler = "euler"
    spacing: Spacing = "linspace"
    transformer: torch.nn.Module
    schedule: FlowSchedule

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

    def run_scheduler(self, fn: Any, x_T: Tensor, scheduler: Any, steps: int, generator: Any = None,
                      callback: Any = None, eta: float = 0.0) -> Tensor:
        """``sample_with_scheduler`` for a composed velocity ``fn``, with this family's timestep options
        (Flux: its sigmas and dynamic shift for x_T's size)."""
        return sample_with_scheduler(fn, x_T, scheduler, steps, generator=generator, callback=callback, eta=eta,
                                     prediction="velocity",
                                     timestep_options=self._scheduler_options(steps, tuple(x_T.shape[1:])))

    def _info(self) -> dict[str, Any]:
        return {**super()._info(), "timestep_spacing": self.spacing}


__all__ = ["PipelineBackend", "VPBackend", "UNetDenoiser", "FlowBackend", "vae_decode", "warn_truncated", "seed_list", "to_eps",
           "vp_schedule_of", "flow_schedule_of", "check_flow_scheduler", "calculate_shift"]
