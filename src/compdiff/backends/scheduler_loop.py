"""Sampling with any diffusers scheduler object, composition staying in ``eps_fn``.

compdiff's samplers (``sample_ddim``, ``sample_ddpm``) are plain functions; users of
diffusers also expect Euler, DPM-Solver, UniPC, ... . Because composition happens inside
the model call, a scheduler's ``step`` needs nothing new: it receives the composed eps as
if it were one model's output. This module is that loop, and only that loop.

The composed ``eps_fn`` always returns eps (a v-prediction model's output was converted
once, in the denoiser), so a scheduler configured for another prediction type is rebuilt
from its config with ``prediction_type="epsilon"``. The caller's scheduler object is never
modified (the loop works on a copy).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import Tensor

from compdiff.denoiser import EpsFn
from compdiff.sampling import Callback, Generator, StepInfo
from compdiff.schedule import NoiseSchedule


def eps_scheduler(scheduler: Any) -> Any:
    """A private copy of ``scheduler`` that reads model outputs as eps."""
    if getattr(scheduler.config, "prediction_type", "epsilon") == "epsilon":
        return copy.deepcopy(scheduler)
    return type(scheduler).from_config({**scheduler.config, "prediction_type": "epsilon"})


def _step_kwargs(scheduler: Any, generator: Generator, eta: float) -> dict[str, Any]:
    """Pass ``generator`` / ``eta`` only to schedulers whose ``step`` takes them (as diffusers' pipelines do)."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in params:
        kwargs["generator"] = list(generator) if isinstance(generator, tuple) else generator
    if "eta" in params:
        kwargs["eta"] = eta
    return kwargs


def sample_with_scheduler(eps_fn: EpsFn, x_T: Tensor, scheduler: Any, num_inference_steps: int,
                          generator: Generator = None, callback: Callback | None = None,
                          eta: float = 0.0) -> Tensor:
    """Run ``scheduler.set_timesteps`` + ``scheduler.step`` with the composed ``eps_fn``.

    x_T: (B, C, h, w) standard normal noise (multiplied here by ``init_noise_sigma``).
    Each step: x_in = scheduler.scale_model_input(x, t) (the variance-preserving x_t the model
    was trained on; identity for DDIM/DDPM/DPM-Solver), eps = eps_fn(x_in, t), x = step(eps, t, x).
    generator: one generator or a list (one per sample), passed to ``step`` when it takes one
    (ancestral/SDE schedulers); eta likewise (DDIM). callback gets StepInfo after each step; its
    x0 is the scheduler's ``pred_original_sample`` when it gives one. Returns the final latents.
    """
    sched = eps_scheduler(scheduler)
    sched.set_timesteps(num_inference_steps, device=x_T.device)
    extra = _step_kwargs(sched, generator, eta)
    x = x_T * sched.init_noise_sigma
    timesteps = sched.timesteps
    B = x.shape[0]
    for i, t in enumerate(timesteps):
        x_in = sched.scale_model_input(x, t)
        eps = eps_fn(x_in, t.reshape(1).expand(B).to(x.device))
        out = sched.step(eps, t, x, **extra, return_dict=True)
        x = out.prev_sample
        if callback is not None:
            t_int = int(round(float(t)))
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:  # x_0 = (x_t − σ_t ε)/α_t at the scheduler's (possibly fractional) time
                x0 = NoiseSchedule.from_diffusers(sched).x0_from_eps(x_in, eps, t.reshape(1).cpu().double())
            callback(StepInfo(i, len(timesteps), t_int, x, x0))
    return x
