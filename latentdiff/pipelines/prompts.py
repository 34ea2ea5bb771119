"""Prompts → text-encoder embeddings: tokenize to the encoder's window, encode (shared by generation, training
and editing)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..models import Components

log = logging.getLogger(__name__)

SHOWN_CHARACTERS = 80  # of a prompt (or of its dropped words) in the truncation warning


def tokenize(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (B, L), padded/truncated to ``tokenizer.model_max_length``.

    Prompts that do not fit are truncated with a warning giving their length and the dropped words (each shown
    up to its first 80 characters).
    """
    max_length = tokenizer.model_max_length
    batch = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                      return_tensors="pt")
    ids = batch.input_ids
    full = tokenizer(list(prompts), padding="longest", return_tensors="pt")
    if full.input_ids.shape[-1] > ids.shape[-1]:
        lengths = full.attention_mask.sum(dim=-1).tolist()  # tokens of each prompt, start and end included
        tails = tokenizer.batch_decode(full.input_ids[:, max_length - 1 : -1])
        for prompt, length, dropped in zip(prompts, lengths, tails):
            dropped = dropped.replace(tokenizer.pad_token or "", "").replace(tokenizer.eos_token or "", "").strip()
            if dropped:
                log.warning("prompt longer than %d tokens, truncated (%d tokens, %d characters): %r; dropped: %r",
                            max_length, length, len(prompt), shorten(prompt), shorten(dropped))
    return ids, batch.attention_mask


def shorten(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """``text`` cut to its first ``limit`` characters, with '…' when cut (for warnings about long prompts)."""
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


@torch.inference_mode()
def encode_prompts(components: Components, prompts: Sequence[str]) -> torch.Tensor:
    """Last hidden states of the text encoder, (B, L, D), in the model's dtype."""
    ids, mask = tokenize(components.tokenizer, prompts)
    encoder = components.text_encoder
    mask = mask.to(encoder.device) if getattr(encoder.config, "use_attention_mask", False) else None
    return encoder(ids.to(encoder.device), attention_mask=mask)[0].to(encoder.dtype)
