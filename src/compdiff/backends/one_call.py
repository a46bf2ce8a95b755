"""The part of every pipeline backend's ``sample_latents`` that does not depend on the family.

Each backend composes its own prediction function (its denoiser, encoder and options), then
hands it here with the latent shape and the seeds: one generator per image, OR clauses drawn
from those generators (image i depends only on seeds[i]), and the starting noise. The three
variance-preserving families (SD 1.x/2.x, SDXL, PixArt) also share the sampling itself:
compdiff's DDIM on the backend's timesteps, or the given diffusers scheduler.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from compdiff.backends.scheduler_loop import sample_with_scheduler
from compdiff.errors import InputError
from compdiff.sampling import Callback, generators, randn, sample_ddim
from compdiff.schedule import NoiseSchedule


def seed_list(n: int, seeds: Sequence[int] | None) -> list[int]:
    """The seeds of n images: 0..n-1 by default; a list of another length is an InputError."""
    out = list(range(n)) if seeds is None else [int(s) for s in seeds]
    if len(out) != n:
        raise InputError(f"got {len(out)} seeds for {n} images")
    return out


def seeded_start(fn: Any, shape: Sequence[int], seeds: Sequence[int],
                 device: torch.device | str) -> tuple[Any, Tensor, list[torch.Generator]]:
    """(fn with each image's OR clause drawn from its seed, x_T of shape (n, *shape), the generators)."""
    gens = generators(seeds)
    fn = fn.with_clauses(fn.draw_clauses(len(seeds), gens))  # OR: each image draws its clause by its seed
    x_T = randn((len(seeds), *shape), gens, dtype=torch.float32, device=device)
    return fn, x_T, gens


def sample_vp(fn: Any, shape: Sequence[int], seeds: Sequence[int], *, device: torch.device | str,
              schedule: NoiseSchedule, timesteps: Callable[[int], Tensor], steps: int, scheduler: Any = None,
              eta: float = 0.0, callback: Callback | None = None) -> Tensor:
    """Latents (n, *shape) from a composed eps function: compdiff's DDIM on ``timesteps(steps)`` when
    scheduler is None, else the given diffusers scheduler via :func:`sample_with_scheduler`."""
    fn, x_T, gens = seeded_start(fn, shape, seeds, device)
    if scheduler is None:
        return sample_ddim(fn, x_T, schedule, timesteps(steps), eta=eta, generator=gens, callback=callback)
    return sample_with_scheduler(fn, x_T, scheduler, steps, generator=gens, callback=callback, eta=eta)


__all__ = ["seed_list", "seeded_start", "sample_vp"]
