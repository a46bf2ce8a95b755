"""Sampling with any diffusers scheduler object, composition staying in ``eps_fn``.

compdiff's samplers (``sample_ddim``, ``sample_euler``, ...) are plain functions; users of
diffusers also expect Euler, DPM-Solver, UniPC, flow-matching Euler, ... . Because composition
happens inside the model call, a scheduler's ``step`` needs nothing new: it receives the
composed prediction as if it were one model's output. This module is that loop, and only
that loop.

Two kinds of scheduler, told apart by :func:`is_flow_scheduler`:

* variance-preserving ones (DDIM, DDPM, DPM-Solver, Euler, UniPC, ...): the composed
  ``eps_fn`` returns eps (a v-prediction model's output was converted once, in the
  denoiser), so a scheduler configured for another prediction type is rebuilt from its
  config with ``prediction_type="epsilon"``. The model's time is the scheduler's timestep.
* flow-matching ones (``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler``,
  and any scheduler with ``use_flow_sigmas`` / ``prediction_type="flow_prediction"``): the
  composed function returns the velocity dx/dσ = ε − x_0 of rectified flow (a prediction
  function over a ``FlowSchedule``; composing velocities is the ε rule, docs/operators.md),
  and a scheduler with a ``prediction_type`` is rebuilt with ``"flow_prediction"``. They have
  no ``init_noise_sigma`` (x_1 is the noise itself) and often no ``scale_model_input``. Their
  timesteps are σ·num_train_timesteps; the composed function is called at the FlowSchedule
  time σ = timestep / num_train_timesteps, as a float64 tensor (so that a denoiser that
  multiplies by num_train_timesteps again recovers the scheduler's timestep exactly).

The caller's scheduler object is never modified (the loop works on a copy).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Literal, Mapping

import torch
from torch import Tensor

from compdiff.denoiser import EpsFn
from compdiff.sampling import Callback, Generator, StepInfo
from compdiff.schedule import FlowSchedule, NoiseSchedule

LoopPrediction = Literal["epsilon", "velocity"]


def is_flow_scheduler(scheduler: Any) -> bool:
    """Whether ``scheduler`` integrates rectified flow (σ in [0, 1], model output = velocity)."""
    cfg = scheduler.config
    return (type(scheduler).__name__.startswith("FlowMatch") or bool(cfg.get("use_flow_sigmas", False))
            or cfg.get("prediction_type") == "flow_prediction")


def eps_scheduler(scheduler: Any) -> Any:
    """A private copy of ``scheduler`` that reads model outputs as eps."""
    return _scheduler_reading(scheduler, "epsilon")


def _scheduler_reading(scheduler: Any, prediction_type: str) -> Any:
    """A private copy of ``scheduler`` whose ``prediction_type`` (when it has one) is ``prediction_type``."""
    current = scheduler.config.get("prediction_type")
    if current is None or current == prediction_type:
        return copy.deepcopy(scheduler)
    return type(scheduler).from_config({**scheduler.config, "prediction_type": prediction_type})


def _step_kwargs(scheduler: Any, generator: Generator, eta: float) -> dict[str, Any]:
    """Pass ``generator`` / ``eta`` only to schedulers whose ``step`` takes them (as diffusers' pipelines do)."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in params:
        kwargs["generator"] = list(generator) if isinstance(generator, tuple) else generator
    if "eta" in params:
        kwargs["eta"] = eta
    return kwargs


def _accepted(fn: Any, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of ``options`` that ``fn`` takes as keyword arguments."""
    if not options:
        return {}
    params = inspect.signature(fn).parameters
    return {k: v for k, v in options.items() if k in params}


def sample_with_scheduler(eps_fn: EpsFn, x_T: Tensor, scheduler: Any, num_inference_steps: int,
                          generator: Generator = None, callback: Callback | None = None,
                          eta: float = 0.0, *, prediction: LoopPrediction | None = None,
                          timestep_options: Mapping[str, Any] | None = None) -> Tensor:
    """Run ``scheduler.set_timesteps`` + ``scheduler.step`` with the composed ``eps_fn``.

    x_T: (B, C, h, w) standard normal noise (multiplied here by ``init_noise_sigma`` where the
    scheduler has one). Each step: x_in = scheduler.scale_model_input(x, t) (the variance-preserving
    x_t the model was trained on; identity for DDIM/DDPM/DPM-Solver; skipped where the scheduler has
    none), p = eps_fn(x_in, time), x = step(p, t, x).

    prediction: what ``eps_fn`` returns, "epsilon" or "velocity"; None: "velocity" for a flow-matching
    scheduler and "epsilon" otherwise (see the module docstring). A velocity needs a flow-matching
    scheduler and eps a variance-preserving one (ValueError otherwise). time: the scheduler's timestep
    for VP schedulers, σ = timestep / num_train_timesteps (float64) for flow-matching ones.
    timestep_options: extra keyword arguments for ``set_timesteps`` (e.g. Flux's ``sigmas`` and ``mu``);
    those the scheduler's ``set_timesteps`` does not take are left out.
    generator: one generator or a list (one per sample), passed to ``step`` when it takes one
    (ancestral/SDE schedulers); eta likewise (DDIM). callback gets StepInfo after each step (t: the
    model's time); its x0 is the scheduler's ``pred_original_sample`` when it gives one, else derived
    from the prediction. Returns the final latents.
    """
    flow = is_flow_scheduler(scheduler)
    prediction = prediction or ("velocity" if flow else "epsilon")
    if prediction not in ("epsilon", "velocity"):
        raise ValueError(f"prediction must be 'epsilon' or 'velocity', got {prediction!r}")
    name = type(scheduler).__name__
    if prediction == "velocity" and not flow:
        raise ValueError(f"{name} is not a flow-matching scheduler, but the composed function returns rectified-flow "
                         "velocities: use FlowMatchEulerDiscreteScheduler (or another flow-matching scheduler)")
    if prediction == "epsilon" and flow:
        raise ValueError(f"{name} is a flow-matching scheduler, but the composed function returns eps: use a "
                         "variance-preserving scheduler (DDIM, DPM-Solver, Euler, ...)")
    sched = _scheduler_reading(scheduler, "flow_prediction" if flow else "epsilon")
    sched.set_timesteps(num_inference_steps, device=x_T.device, **_accepted(sched.set_timesteps, timestep_options))
    extra = _step_kwargs(sched, generator, eta)
    x = x_T * getattr(sched, "init_noise_sigma", 1.0)
    timesteps = sched.timesteps
    n_train = float(sched.config.get("num_train_timesteps", 1000))
    scale_input = getattr(sched, "scale_model_input", None)
    B = x.shape[0]
    for i, t in enumerate(timesteps):
        x_in = scale_input(x, t) if scale_input is not None else x
        if flow:
            time = t.detach().to(x.device, torch.float64).reshape(1).expand(B) / n_train
        else:
            time = t.reshape(1).expand(B).to(x.device)
        out_model = eps_fn(x_in, time)
        out = sched.step(out_model, t, x, **extra, return_dict=True)
        x = out.prev_sample
        if callback is not None:
            x0 = getattr(out, "pred_original_sample", None)
            if flow:
                t_info = float(t) / n_train
                if x0 is None:  # x_0 = x_σ − σ·u
                    x0 = FlowSchedule().x0_eps_from_velocity(x_in, out_model, t_info)[0]
            else:
                t_info = int(round(float(t)))
                if x0 is None:  # x_0 = (x_t − σ_t ε)/α_t at the scheduler's (possibly fractional) time
                    x0 = NoiseSchedule.from_diffusers(sched).x0_from_eps(x_in, out_model, t.reshape(1).cpu().double())
            callback(StepInfo(i, len(timesteps), t_info, x, x0))
    return x
