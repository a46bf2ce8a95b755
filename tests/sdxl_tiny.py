"""Build a tiny random Stable Diffusion XL pipeline (no downloads) and save it to a directory.

The layout is StableDiffusionXLPipeline's: two CLIP text encoders (a CLIPTextModel and a
CLIPTextModelWithProjection, with DIFFERENT widths here so that a mix-up shows), their
tokenizers (the local byte-level BPE of ``sd_tiny``; the second pads with "!" as SDXL's
tokenizer_2 does), a UNet2DConditionModel with ``addition_embed_type="text_time"`` and an
AutoencoderKL with SDXL's scaling factor. A few hundred kB of weights; builds in < 1 s.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from sd_tiny import write_tokenizer_files

HIDDEN_1, HIDDEN_2, PROJECTION = 32, 40, 24  # text_encoder width, text_encoder_2 width, its text_embeds
TIME_EMBED = 4  # addition_time_embed_dim: 6 time ids -> 24 numbers
SCALING_FACTOR = 0.13025  # SDXL's VAE


def build_pipeline(tmp: Path, prediction_type: str = "epsilon", seed: int = 0, sample_size: int = 8,
                   force_zeros_for_empty_prompt: bool = True, scheduler: str = "euler"):
    """A tiny StableDiffusionXLPipeline (float32, CPU).

    scheduler: "euler" (SDXL's EulerDiscreteScheduler: leading spacing, steps_offset 1) or "ddim" (final
    alpha 1, as compdiff's DDIM ends).
    """
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    write_tokenizer_files(tmp / "tok_src")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp / "tok_src"), model_max_length=77)
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(tmp / "tok_src"), model_max_length=77, pad_token="!")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN_1 + HIDDEN_2, norm_num_groups=8, attention_head_dim=4,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + PROJECTION)

    def text_config(hidden: int, **extra) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act="gelu", **extra)

    text_encoder = CLIPTextModel(text_config(HIDDEN_1))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(HIDDEN_2, projection_dim=PROJECTION))
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=SCALING_FACTOR, force_upcast=True)
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                  timestep_spacing="leading", prediction_type=prediction_type)
    if scheduler == "euler":
        sched = EulerDiscreteScheduler(interpolation_type="linear", **common)
    else:
        sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=sched,
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt, add_watermarker=False)
    for module in (unet, text_encoder, text_encoder_2, vae):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(folder: Path, **kwargs):
    """Build the tiny pipeline and ``save_pretrained`` it to ``folder``; returns the pipeline."""
    pipe = build_pipeline(folder.parent / (folder.name + "_build"), **kwargs)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return pipe


def edit_index(folder: Path, **changes) -> None:
    """Set (value) or drop (None) entries of ``folder/model_index.json``."""
    path = folder / "model_index.json"
    index = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            index.pop(key, None)
        else:
            index[key] = value
    path.write_text(json.dumps(index, indent=2), encoding="utf-8")


def refiner_like(src: Path, dst: Path) -> Path:
    """A copy of ``src`` laid out as the SDXL refiner saves: StableDiffusionXLImg2ImgPipeline with no
    text_encoder / tokenizer (only the _2 ones) and requires_aesthetics_score."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "text_encoder")
    shutil.rmtree(dst / "tokenizer")
    edit_index(dst, _class_name="StableDiffusionXLImg2ImgPipeline", text_encoder=[None, None],
               tokenizer=[None, None], requires_aesthetics_score=True)
    return dst


def inpainting_like(src: Path, dst: Path) -> Path:
    """A copy of ``src`` relabelled as StableDiffusionXLInpaintPipeline, its UNet taking 9 channels."""
    shutil.copytree(src, dst)
    edit_index(dst, _class_name="StableDiffusionXLInpaintPipeline")
    cfg = dst / "unet" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text(encoding="utf-8")), "in_channels": 9}), encoding="utf-8")
    return dst
