"""The text side of a Stable Diffusion pipeline as a compdiff ``ConceptEncoder``.

``encode(prompts) -> (K, L, D)``: each prompt tokenized to the text encoder's window
(L = tokenizer.model_max_length, 77 for CLIP), padded, and run through the text
encoder once; row k is the last hidden state for prompt k, exactly what diffusers'
``StableDiffusionPipeline.encode_prompt`` feeds the UNet. ``null() -> (1, L, D)`` is the
empty prompt "", which is diffusers' unconditional embedding for classifier-free
guidance. A prompt longer than the window is truncated with a warning, never an error.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import Tensor

from compdiff.backends.offload import execution_device


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than the text encoder's window; the tail was dropped."""


class CLIPPromptEncoder:
    """ConceptEncoder over (tokenizer, text_encoder) of a diffusers text-to-image pipeline.

    clip_skip: as diffusers' ``clip_skip``: use the hidden state ``clip_skip`` layers before
    the last, passed through the final layer norm; None uses the last hidden state.
    """

    def __init__(self, tokenizer: Any, text_encoder: torch.nn.Module, clip_skip: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.clip_skip = clip_skip
        self.max_length = int(tokenizer.model_max_length)
        self._null: Tensor | None = None

    def _warn_if_truncated(self, prompts: Sequence[str]) -> None:
        for prompt in prompts:
            ids = self.tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
            dropped = len(ids) - self.max_length
            if dropped > 0:
                # ids = [BOS, tokens..., EOS]; the window keeps BOS + (max_length - 2) tokens + EOS
                removed = self.tokenizer.decode(ids[self.max_length - 1:-1])
                warnings.warn(
                    f"prompt {prompt!r} is {len(ids)} tokens long but the text encoder reads at most "
                    f"{self.max_length}: the last {dropped} tokens were dropped ({removed!r})",
                    PromptTruncatedWarning, stacklevel=3)

    @torch.no_grad()
    def encode(self, concepts: Sequence[str]) -> Tensor:
        """(K, L, D) text embeddings, one row per prompt, in the text encoder's dtype, on its execution device."""
        prompts = list(concepts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        self._warn_if_truncated(prompts)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt")
        device = execution_device(self.text_encoder)  # under cpu_offload its weights wait on the CPU
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        ids = tokens.input_ids.to(device)
        if self.clip_skip is None:
            return self.text_encoder(ids, attention_mask=mask)[0]
        hidden = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        return self.text_encoder.text_model.final_layer_norm(hidden[-(self.clip_skip + 1)])

    def null(self) -> Tensor:
        """(1, L, D): the empty prompt's embedding (computed once, then cached)."""
        if self._null is None:
            self._null = self.encode([""])
        return self._null
