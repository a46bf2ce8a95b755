"""Adapters for models compdiff did not train (layer 10), and the registry that opens any model.

``compdiff.open_model(name_or_path)`` (``registry.py``) detects the family of a directory and
opens it: world models (``world.py``, ``compdiff.json``) and Stable Diffusion 1.x / 2.x pipelines
(``diffusers.py``, a local diffusers folder; :func:`sample_with_scheduler` samples with any
diffusers scheduler). diffusers and transformers are imported only when a pipeline folder is
opened (``import compdiff`` imports neither).
"""
from compdiff.backends.diffusers import DiffusersBackend, UNetDenoiser
from compdiff.backends.registry import BACKENDS, Backend, OpenedModel, open_model, register_backend
from compdiff.backends.scheduler_loop import sample_with_scheduler
from compdiff.backends.sd_text import CLIPPromptEncoder, PromptTruncatedWarning

__all__ = ["BACKENDS", "Backend", "OpenedModel", "open_model", "register_backend", "DiffusersBackend",
           "UNetDenoiser", "CLIPPromptEncoder", "PromptTruncatedWarning", "sample_with_scheduler"]
