"""Adapters for models compdiff did not train (layer 10), and the registry that opens any model.

``compdiff.open_model(name_or_path)`` (``registry.py``) detects the family of a directory and
opens it. Families, one adapter file each (each registers itself on import):

* ``compdiff-world`` (``world.py``): models trained by ``compdiff train`` (``compdiff.json``);
* ``stable-diffusion`` (``diffusers.py``): Stable Diffusion 1.x / 2.x;
* ``sdxl`` (``sdxl.py``): Stable Diffusion XL (two text encoders, pooled embeddings, time ids);
* ``sd3`` (``sd3.py``): Stable Diffusion 3 / 3.5 (rectified flow, MMDiT, CLIP-L/G + optional T5);
* ``flux`` (``flux.py``): Flux.1 dev (guidance-distilled) and schnell;
* ``pixart`` (``pixart.py``): PixArt-Σ (T5 only, DiT, VP/ε; PixArt-α is refused).

All are local diffusers folders (``model_index.json``); compdiff never downloads. What families
share is written once: ``components.py`` (loading; no code or pickle from a model folder),
``base.py`` (the VP base and the flow base: shapes, schedules, decoding, and ``generate`` /
``sample_latents``, which are :func:`compdiff.generate` on the backend's OpenedModel view);
a family file holds only what is its own. :func:`sample_with_scheduler` is the diffusers
scheduler loop that ``compdiff.generate(scheduler=...)`` runs. diffusers and transformers are
imported only when a pipeline is opened.
"""
from compdiff.backends.diffusers import DiffusersBackend, UNetDenoiser
from compdiff.backends.flux import FluxBackend
from compdiff.backends.pixart import PixArtBackend
from compdiff.backends.registry import BACKENDS, Backend, OpenedModel, open_model, register_backend
from compdiff.backends.scheduler_loop import sample_with_scheduler
from compdiff.backends.sd3 import SD3Backend
from compdiff.backends.sd_text import CLIPPromptEncoder, PromptTruncatedWarning
from compdiff.backends.sdxl import SDXLBackend

__all__ = ["BACKENDS", "Backend", "OpenedModel", "open_model", "register_backend", "DiffusersBackend",
           "SDXLBackend", "SD3Backend", "FluxBackend", "PixArtBackend", "UNetDenoiser", "CLIPPromptEncoder",
           "PromptTruncatedWarning",
           "sample_with_scheduler"]
