"""Prompts → text-encoder embeddings: tokenize to the encoder's window, encode (shared by generation, training
and editing)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..models import Components

log = logging.getLogger(__name__)


def tokenize(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (B, L), padded/truncated to ``tokenizer.model_max_length``.

    Prompts that do not fit are truncated with a warning that names the dropped words.
    """
    max_length = tokenizer.model_max_length
    batch = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                      return_tensors="pt")
    ids = batch.input_ids
    full = tokenizer(list(prompts), padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > ids.shape[-1]:
        for dropped in tokenizer.batch_decode(full[:, max_length - 1 : -1]):
            dropped = dropped.replace(tokenizer.pad_token or "", "").replace(tokenizer.eos_token or "", "").strip()
            if dropped:
                log.warning("prompt longer than %d tokens, truncated; dropped: %r", max_length, dropped)
    return ids, batch.attention_mask


@torch.inference_mode()
def encode_prompts(components: Components, prompts: Sequence[str]) -> torch.Tensor:
    """Last hidden states of the text encoder, (B, L, D), in the model's dtype."""
    ids, mask = tokenize(components.tokenizer, prompts)
    encoder = components.text_encoder
    mask = mask.to(encoder.device) if getattr(encoder.config, "use_attention_mask", False) else None
    return encoder(ids.to(encoder.device), attention_mask=mask)[0].to(encoder.dtype)
