"""compdiff: compositional generation with diffusion models.

    import compdiff as cd
    expr = cd.parse('"0.30,0.50" AND "0.70,0.50" AND NOT "0.50,0.20"')
    denoiser, encoder, schedule = cd.load_pretrained("objects")
    eps_fn = cd.compose(denoiser, encoder, expr, guidance_scale=3.0)
    x_T = cd.randn((4, 3, 32, 32), cd.generators([0, 1, 2, 3]))
    x0 = cd.sample_ddim(eps_fn, x_T, schedule, schedule.timesteps(50, "trailing"), clip_x0=1.0)

    # or the one generation path every front end uses (seeds, OR clauses, x_T, timesteps, sampler, decode):
    images = cd.generate(cd.open_model("objects"), expr, seeds=range(4)).uint8()   # (4, 3, 32, 32) uint8

Heavy submodules (models, world, eval, backends) load on first use.
"""
from compdiff.compose import ComposedEps, compose
from compdiff.denoiser import ConceptEncoder, Denoiser, EpsFn
from compdiff.errors import InputError, ParseError
from compdiff.expr import Expr, Term, parse
from compdiff.lift import CachedLift, Lift, lift  # noqa: F401 - public: per-term lift scores
from compdiff.correctors import Corrector
from compdiff.sampling import (SAMPLERS, StepInfo, generators, get_sampler, randn, register_sampler, sample_ddim,
                               sample_ddpm, sample_dpmpp_2m, sample_euler)
from compdiff.schedule import FlowSchedule, NoiseSchedule, Schedule
from compdiff.generate import Generated, OpenedModel, generate  # noqa: E402  (the function shadows the module)

__version__ = "0.1.0"


def open_model(name_or_path, *, device="cpu", dtype: str = "auto", bf16: bool = False):
    """Open a shipped world model by name, or a model directory of any registered family
    (compdiff.json, diffusers model_index.json): an OpenedModel with denoiser, encoder, schedule,
    recommended sampler, family, latent shape and decoder. See compdiff.backends.registry."""
    from compdiff.backends.registry import open_model as _open

    return _open(name_or_path, device=device, dtype=dtype, bf16=bf16)


def load_pretrained(task: str = "objects", bf16: bool = False):
    """(denoiser, encoder, schedule) of the model shipped for ``task`` (``.config`` too); see compdiff.models."""
    from compdiff.models import load_pretrained as _load

    return _load(task, bf16=bf16)


def load_model(path, bf16: bool = False):
    """(denoiser, encoder, schedule) of a model directory written by ``compdiff train`` (``.config`` too)."""
    from compdiff.models import load_model as _load

    return _load(path, bf16=bf16)


__all__ = ["parse", "Expr", "Term", "compose", "ComposedEps", "Schedule", "NoiseSchedule", "FlowSchedule",
           "SAMPLERS", "get_sampler", "register_sampler", "Corrector", "sample_ddpm", "sample_ddim", "sample_euler",
           "sample_dpmpp_2m", "StepInfo", "generators", "randn", "Denoiser", "ConceptEncoder", "EpsFn",
           "InputError", "ParseError", "open_model", "load_pretrained", "load_model", "generate", "Generated",
           "OpenedModel"]
