"""compdiff: compositional generation with diffusion models.

    import compdiff as cd
    expr = cd.parse('"0.30,0.50" AND "0.70,0.50" AND NOT "0.50,0.20"')
    denoiser, encoder, schedule = cd.load_pretrained("objects")
    eps_fn = cd.compose(denoiser, encoder, expr, guidance_scale=3.0)
    x_T = cd.randn((4, 3, 32, 32), cd.generators([0, 1, 2, 3]))
    x0 = cd.sample_ddim(eps_fn, x_T, schedule, schedule.timesteps(50, "trailing"), clip_x0=1.0)

Heavy submodules (models, world, eval, backends) load on first use.
"""
from compdiff.compose import ComposedEps, compose
from compdiff.denoiser import ConceptEncoder, Denoiser, EpsFn
from compdiff.errors import InputError, ParseError
from compdiff.expr import Expr, Term, parse
from compdiff.sampling import StepInfo, generators, randn, sample_ddim, sample_ddpm
from compdiff.schedule import NoiseSchedule

__version__ = "0.1.0"


def load_pretrained(task: str = "objects", bf16: bool = False):
    """(denoiser, encoder, schedule) of the model shipped for ``task`` (``.config`` too); see compdiff.models."""
    from compdiff.models import load_pretrained as _load

    return _load(task, bf16=bf16)


def load_model(path, bf16: bool = False):
    """(denoiser, encoder, schedule) of a model directory written by ``compdiff train`` (``.config`` too)."""
    from compdiff.models import load_model as _load

    return _load(path, bf16=bf16)


__all__ = ["parse", "Expr", "Term", "compose", "ComposedEps", "NoiseSchedule", "sample_ddpm",
           "sample_ddim", "StepInfo", "generators", "randn", "Denoiser", "ConceptEncoder", "EpsFn",
           "InputError", "ParseError", "load_pretrained", "load_model"]
