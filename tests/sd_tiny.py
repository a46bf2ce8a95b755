"""Build a tiny random Stable Diffusion pipeline (no downloads) and save it to a directory.

Tokenizer: a byte-level BPE vocabulary written here (every byte symbol, alone and as a
word end "</w>", plus a few merges), so CLIPTokenizer loads from vocab.json/merges.txt
without touching the network. Sizes follow DESIGN.md's "tiny models for tests".
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

MERGES = ["t h", "th e</w>", "c a", "s t", "r e", "e d</w>", "o n"]


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (as CLIP's BPE uses)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer_files(folder: Path) -> None:
    """vocab.json + merges.txt of a tiny CLIP BPE (~530 tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")


def build_pipeline(tmp: Path, prediction_type: str = "epsilon", seed: int = 0, sample_size: int = 8):
    """A tiny StableDiffusionPipeline (float32, CPU) with a DDIMScheduler (no clipping, a_final = 1)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    write_tokenizer_files(tmp / "tok_src")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp / "tok_src"), model_max_length=77)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=True, steps_offset=1, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for module in (unet, text_encoder, vae):
        module.eval()
    return pipe


def save_pipeline(folder: Path, **kwargs):
    """Build the tiny pipeline and ``save_pretrained`` it to ``folder``; returns the pipeline."""
    pipe = build_pipeline(folder.parent / (folder.name + "_build"), **kwargs)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return pipe
