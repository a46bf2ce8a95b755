"""Model CPU offload for the pipeline families: ``cpu_offload=True`` / ``compdiff sample --cpu-offload``.

What diffusers' ``enable_model_cpu_offload`` does, with accelerate's ``cpu_offload_with_hook``: every big
module of a pipeline (the text encoders, the UNet or transformer, the VAE) keeps its weights in CPU
memory and is moved to the execution device (a GPU) only when it runs. The hooks are chained in the
order a run uses the modules, text encoders -> denoiser -> VAE, so that starting one module's forward
sends the previous one back to the CPU; the first text encoder's hook also sends the denoiser back
(prompts composed again after sampling), and :func:`release` sends the VAE back after each decode
(what diffusers' ``maybe_free_model_hooks`` does at the end of a pipeline call). Peak device memory is
then about the largest module's weights plus its activations, instead of the sum of all modules, at
the price of copying each module's weights to the device once per use (the denoiser once per batch of
images: it stays on the device for every step of the batch).

Parameters live on the CPU between uses, so "the device of the first parameter" is no longer where a
module runs: the backends ask :func:`execution_device` instead, which reads the hook's
execution_device (and falls back to the parameters' device when there is no hook).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch


def offload_hook(module: torch.nn.Module) -> Any | None:
    """The accelerate hook of ``module`` that has an ``execution_device`` (a CpuOffload, or one inside a
    SequentialHook), or None when the module is not offloaded."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return None
    for inner in getattr(hook, "hooks", (hook,)):
        if getattr(inner, "execution_device", None) is not None:
            return inner
    return None


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` runs: its offload hook's execution device, else the device of its parameters."""
    hook = offload_hook(module)
    if hook is not None:
        device = hook.execution_device
        return torch.device(f"cuda:{device}") if isinstance(device, int) else torch.device(device)
    return next(module.parameters()).device


class RunsOnDenoiser:
    """``device`` and ``dtype`` of a pipeline backend: those of its denoising network, the attribute
    named by ``denoiser_module`` ("unet" or "transformer"). ``device`` is where that network runs
    (its execution device under cpu_offload, where its weights are otherwise)."""

    denoiser_module = "unet"

    @property
    def device(self) -> torch.device:
        return execution_device(getattr(self, self.denoiser_module))

    @property
    def dtype(self) -> torch.dtype:
        return next(getattr(self, self.denoiser_module).parameters()).dtype


def _indexed(device: torch.device | str) -> torch.device:
    """``device`` with an index for accelerators ("cuda" -> "cuda:<current>"), so that the hook's
    comparison with a parameter's device (always indexed) holds when the module is already there."""
    device = torch.device(device)
    if device.type == "cpu" or device.index is not None:
        return device
    module = getattr(torch, device.type, None)
    index = module.current_device() if module is not None and hasattr(module, "current_device") else 0
    return torch.device(device.type, index)


def enable_model_cpu_offload(modules: Sequence[torch.nn.Module | None], device: torch.device | str,
                             denoiser: torch.nn.Module) -> list[Any]:
    """Offload ``modules`` (in the order a run uses them: text encoders, denoiser, VAE; None entries are
    skipped) to the CPU, each moved to ``device`` while it runs. ``denoiser`` is one of them: the first
    module's hook also offloads it. Existing accelerate hooks on the modules are removed first. Returns
    the accelerate ``UserCpuOffloadHook`` of each module, in order.

    ``device`` may be the CPU (the moves are then no-ops but the hooks still run: the tests use that)."""
    from accelerate import cpu_offload_with_hook
    from accelerate.hooks import remove_hook_from_module

    device = _indexed(device)
    chain = [m for m in modules if m is not None]
    if denoiser not in chain:
        raise ValueError("the denoiser must be one of the offloaded modules")
    hooks: list[Any] = []
    previous = None
    for module in chain:
        remove_hook_from_module(module, recurse=True)
        _, previous = cpu_offload_with_hook(module, execution_device=device, prev_module_hook=previous)
        hooks.append(previous)
    first = hooks[0]
    if chain[0] is not denoiser:
        first.hook.prev_module_hook = hooks[chain.index(denoiser)]
    return hooks


def release(module: torch.nn.Module) -> None:
    """Send an offloaded ``module`` back to the CPU now (after the VAE's decode); nothing without a hook."""
    hook = offload_hook(module)
    if hook is None:
        return
    from accelerate.hooks import CpuOffload

    if isinstance(hook, CpuOffload) and next(module.parameters()).device.type != "cpu":
        hook.init_hook(module)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # as accelerate does when a chained hook offloads the previous module
