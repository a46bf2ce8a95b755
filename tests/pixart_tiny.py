"""A tiny random PixArt-Σ pipeline (no downloads), saved to a directory for tests/test_backend_pixart.py.

The T5 tokenizer and encoder are tests/flow_tiny.py's (a ``tokenizers`` Unigram tokenizer.json loaded by
T5TokenizerFast, a 2-layer T5EncoderModel); the transformer is a 2-layer PixArtTransformer2DModel that
learns σ (8 output channels for 4 latent channels), the scheduler diffusers' DPMSolverMultistepScheduler
(the released model's), the VAE a 2-level AutoencoderKL without shift factor.
"""
from __future__ import annotations

from pathlib import Path

import torch

import flow_tiny

#: T5 window used by the tests (the pipeline's default is 300)
T5_LENGTH = 16
T5_DIM = 32


def build_pixart(tmp: Path, seed: int = 0):
    """A tiny PixArtSigmaPipeline (float32, CPU): 8x8 latents (16x16 images), patch 2, 16 image tokens."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tokenizer = flow_tiny.write_t5_tokenizer(tmp / "t5_tok")
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=T5_DIM,
        use_additional_conditions=False)
    text_encoder = flow_tiny._t5(tokenizer, T5_DIM)
    vae = flow_tiny._vae(4, 16, shift_factor=None)
    scheduler = DPMSolverMultistepScheduler()
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=scheduler)
    for module in (transformer, text_encoder, vae):
        module.eval()
    return pipe


def save_pixart(folder: Path, **kwargs):
    """Build, ``save_pretrained`` (safetensors) to ``folder``; returns the pipeline."""
    pipe = build_pixart(folder.parent / (folder.name + "_build"), **kwargs)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return pipe
