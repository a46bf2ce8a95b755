"""Tiny random SD3 and Flux.1 pipelines (no downloads), saved to a directory for the flow backends' tests.

Tokenizers: the CLIP ones are tests/sd_tiny.py's byte-level BPE (vocab.json + merges.txt);
the T5 one is a ``tokenizers`` Unigram model (lower-case letters, digits, punctuation, a few
words) written here as tokenizer.json and loaded by T5TokenizerFast. Every module is a few
thousand parameters; the scheduler is diffusers' FlowMatchEulerDiscreteScheduler, with a
shift (SD3) or with dynamic shifting (Flux.1-dev; schnell has neither).
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

import sd_tiny

#: T5 window used by the tests (the pipelines' defaults are 256 for SD3 and 512 for Flux)
T5_LENGTH = 16
#: SD3 widths: CLIP-L ⊕ CLIP-G = 40 < the joint (T5) width 48, so encode_prompt's zero padding is exercised
CLIP_L, CLIP_G, T5_DIM = 16, 24, 48


def write_t5_tokenizer(folder: Path):
    """A T5TokenizerFast from a tokenizer.json built here with the ``tokenizers`` library."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "</s>", "<unk>"]
    chars = ["▁"] + list(string.ascii_lowercase + string.digits + string.punctuation)
    words = ["▁" + c for c in string.ascii_lowercase] + ["▁a", "▁the", "▁red", "▁cat", "▁stone", "▁blue", "▁dog"]
    vocab = [(p, 0.0) for p in specials] + [(p, -10.0) for p in chars] + [(p, -2.0) for p in words]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    return T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), extra_ids=0)


def _clip_tokenizer(tmp: Path):
    from transformers import CLIPTokenizer

    sd_tiny.write_tokenizer_files(tmp / "clip_tok")
    return CLIPTokenizer.from_pretrained(str(tmp / "clip_tok"), model_max_length=77)


def _clip(tokenizer, hidden: int, projection: int | None):
    """A 2-layer CLIP text model; with a projection (CLIPTextModelWithProjection) when projection is given."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **({} if projection is None else {"projection_dim": projection}))
    return CLIPTextModel(config) if projection is None else CLIPTextModelWithProjection(config)


def _t5(tokenizer, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0))


def _vae(latent_channels: int, sample_size: int, shift_factor: float | None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=latent_channels,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=sample_size, scaling_factor=0.8, shift_factor=shift_factor, use_quant_conv=False,
        use_post_quant_conv=False)


def build_sd3(tmp: Path, seed: int = 0, with_t5: bool = True, shift: float = 3.0):
    """A tiny StableDiffusion3Pipeline (float32, CPU): 8x8 latents (16x16 images), patch 2, 16 image tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = _clip_tokenizer(tmp)
    t5_tokenizer = write_t5_tokenizer(tmp / "t5_tok") if with_t5 else None
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=T5_DIM, caption_projection_dim=16,
        pooled_projection_dim=CLIP_L + CLIP_G, pos_embed_max_size=16)
    text_encoder = _clip(tokenizer, CLIP_L, CLIP_L)
    text_encoder_2 = _clip(tokenizer, CLIP_G, CLIP_G)
    text_encoder_3 = _t5(t5_tokenizer, T5_DIM) if with_t5 else None
    vae = _vae(4, 16, shift_factor=0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer)
    for module in (transformer, text_encoder, text_encoder_2, text_encoder_3, vae):
        if module is not None:
            module.eval()
    return pipe


def build_flux(tmp: Path, seed: int = 0, guidance: bool = True):
    """A tiny FluxPipeline (float32, CPU): 8x8 latents of 1 channel (16x16 images), packed into 16 tokens of 4.
    guidance=True: a guidance embedding and dynamic shifting (dev); False: neither (schnell)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = _clip_tokenizer(tmp)
    t5_tokenizer = write_t5_tokenizer(tmp / "t5_tok")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance,
        axes_dims_rope=(4, 4, 8))
    text_encoder = _clip(tokenizer, 32, None)
    text_encoder_2 = _t5(t5_tokenizer, 32)
    vae = _vae(1, 16, shift_factor=0.1)
    if guidance:
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                    base_image_seq_len=4, max_image_seq_len=64)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=t5_tokenizer, transformer=transformer)
    for module in (transformer, text_encoder, text_encoder_2, vae):
        module.eval()
    return pipe


def save(pipe, folder: Path):
    """``save_pretrained`` (safetensors) to ``folder``; returns the pipeline."""
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return pipe


def save_sd3(folder: Path, **kwargs):
    return save(build_sd3(folder.parent / (folder.name + "_build"), **kwargs), folder)


def save_flux(folder: Path, **kwargs):
    return save(build_flux(folder.parent / (folder.name + "_build"), **kwargs), folder)
