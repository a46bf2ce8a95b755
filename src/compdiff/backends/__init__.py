"""Adapters for models compdiff did not train (layer 10).

``compdiff.backends.diffusers``: Stable Diffusion 1.x / 2.x pipelines from a local diffusers
folder or pipeline object, as Denoiser + ConceptEncoder + NoiseSchedule + VAE decoder, and
:func:`sample_with_scheduler` to sample with any diffusers scheduler. diffusers and transformers
are imported only when a pipeline folder is loaded (``import compdiff`` imports neither).
"""
from compdiff.backends.diffusers import DiffusersBackend, UNetDenoiser
from compdiff.backends.scheduler_loop import sample_with_scheduler
from compdiff.backends.sd_text import CLIPPromptEncoder, PromptTruncatedWarning

__all__ = ["DiffusersBackend", "UNetDenoiser", "CLIPPromptEncoder", "PromptTruncatedWarning", "sample_with_scheduler"]
