"""Samplers: plain, stateless functions of a condition-free prediction ``fn(x, t)``.

They never see models, concepts or batching; composition happens before, in
``compdiff.compose``. Every sampler has one signature (``base.Sampler``) and is registered
by name in :data:`SAMPLERS`, which the CLI, the evaluation and the web app read::

    x0 = SAMPLERS["dpmpp-2m"](eps_fn, x_T, schedule, 20, generator=gens, corrector=Corrector("ula"))

Adding a sampler is one module in this package (a function decorated with
``@register_sampler("name")``) plus its test: this file imports every module here.
"""
from __future__ import annotations

import importlib
import pkgutil

from compdiff.correctors import Corrector
from compdiff.sampling.base import (SAMPLERS, Callback, Generator, Sampler, StepInfo, generators, get_sampler,
                                    randn, register_sampler, sampler_options)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from compdiff.sampling.ddim import sample_ddim  # noqa: E402
from compdiff.sampling.ddpm import sample_ddpm  # noqa: E402
from compdiff.sampling.dpmpp import sample_dpmpp_2m  # noqa: E402
from compdiff.sampling.euler import sample_euler  # noqa: E402

__all__ = ["SAMPLERS", "Sampler", "StepInfo", "Callback", "Generator", "Corrector", "generators", "randn",
           "get_sampler", "register_sampler", "sampler_options", "sample_ddpm", "sample_ddim", "sample_euler",
           "sample_dpmpp_2m"]
