"""Training inputs: which samples each micro-batch holds, and their latents and text embeddings.

Order: epoch e visits the items in a permutation seeded by (seed, e); the global stream of samples is
cut into micro-batches of ``batch_size × processes``, rank r taking its slice. Everything is a function
of (seed, step), so resuming at step s replays exactly what an uninterrupted run would have done.

With the cache, VAE latent distributions (mean, std; a sample is drawn per use) and text embeddings
are computed once, keyed by content, and reused across runs and processes. Without it, every batch
is encoded on the fly — the same numbers, the way diffusers' example script works. When the text
encoder trains (LoRA on it), text is never cached: batches carry the captions, and the training step
encodes them with :func:`encode_captions`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

import torch

from ..models import Components, encode_images, scale_latents
from ..pipelines.prompts import Chunk, chunk_count, chunk_ids, encode_prompts, hidden_states, prompt_chunks
from .cache import TensorCache, content_key, module_identity
from .data import Item, Transform, load_image, pick_caption, sample_rng

log = logging.getLogger(__name__)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from parts, the same in every process and run."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


class SampleOrder:
    """(epoch, item index) of every sample in the micro-batch a rank trains on at a global micro-step."""

    def __init__(self, num_items: int, seed: int, batch_size: int, num_processes: int = 1):
        self.n, self.seed, self.batch, self.world = num_items, seed, batch_size, num_processes
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(stable_seed(self.seed, "epoch", epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def micro_batch(self, micro_step: int, rank: int) -> list[tuple[int, int]]:
        start = (micro_step * self.world + rank) * self.batch
        return [(p // self.n, self._perm(p // self.n)[p % self.n]) for p in range(start, start + self.batch)]


class TrainingInputs:
    """Latents (scaled, sampled from q(z|x)) and text embeddings for micro-batches of (epoch, index)."""

    def __init__(self, items: list[Item], transform: Transform, frozen: Components, seed: int,
                 cache_dir: Optional[Path] = None, encode_batch_size: int = 8, max_chunks: int = 1,
                 encode_text: bool = True):
        if cache_dir is not None and transform.crop == "random":
            raise ValueError("data.crop=random cannot use the latent cache (every crop differs); "
                             "set data.crop=center or data.cache=false")
        self.items, self.transform, self.frozen, self.seed = items, transform, frozen, seed
        self.encode_batch_size, self.max_chunks = encode_batch_size, max_chunks
        self.encode_text = encode_text  # False: the text encoder trains, batches carry captions (never cached)
        self.counts = {"vae_images": 0, "text_prompts": 0}  # encoder work done by this process
        self.cache_dir = cache_dir
        self.latents: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        self.texts: dict[str, torch.Tensor] = {}
        self.empty = self._encode_text([""])[0]  # (L, D), for caption dropout

    # --- encoders ---------------------------------------------------------------------------------

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, n·L, D): captions (plain text) in up to ``max_chunks`` chunks, padded to the batch's longest."""
        self.counts["text_prompts"] += len(prompts)
        return encode_prompts(self.frozen, prompts, max_chunks=self.max_chunks).float()

    def _chunks(self, caption: str) -> int:
        return min(self.max_chunks, chunk_count(self.frozen.tokenizer, caption))

    def _stack_text(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        """(B, n·L, D): cached caption embeddings, each padded with empty chunks to the longest."""
        length = max(e.shape[0] for e in embeddings)
        return torch.stack([torch.cat([e, *[self.empty] * ((length - e.shape[0]) // self.empty.shape[0])])
                            for e in embeddings])

    def _encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.counts["vae_images"] += pixels.shape[0]
        return encode_images(self.frozen, pixels)

    def _view(self, epoch: int, index: int):
        item = self.items[index]
        image = load_image(item.path)
        left, top, flipped = self.transform.choose(image.size, sample_rng(self.seed, epoch, index, "transform"))
        return image, left, top, flipped

    # --- the cache --------------------------------------------------------------------------------

    def build_cache(self, rank: int = 0, world: int = 1, barrier=lambda: None) -> None:
        """Encode what the cache lacks (rank r takes every world-th missing entry), then load it all."""
        latent_cache = TensorCache(self.cache_dir, "latents")
        text_cache = TensorCache(self.cache_dir, "text")
        barrier()  # every process must split the same snapshot of what is missing
        latent_cache.refresh()
        text_cache.refresh()
        vae_id, text_id = module_identity(self.frozen.vae), module_identity(self.frozen.text_encoder)
        flips = (False, True) if self.transform.flip else (False,)
        latent_keys = {(i, f): content_key(item.digest, self.transform.key(), f"flip={f}", vae_id)
                       for i, item in enumerate(self.items) for f in flips}
        captions = sorted({c for item in self.items for c in item.captions}) if self.encode_text else []
        chunks = () if self.max_chunks == 1 else (f"max_chunks={self.max_chunks}",)
        text_keys = {c: content_key(c, text_id, *chunks) for c in captions}

        todo = latent_cache.missing(latent_keys.values())[rank::world]
        todo_text = text_cache.missing(text_keys.values())[rank::world]
        by_key = {v: k for k, v in latent_keys.items()}
        for start in range(0, len(todo), self.encode_batch_size):
            chunk = todo[start:start + self.encode_batch_size]
            pixels = []
            for key in chunk:
                i, flipped = by_key[key]
                image = load_image(self.items[i].path)
                left, top, _ = self.transform.choose(image.size, flip=flipped)
                pixels.append(self.transform.apply(image, left, top, flipped))
            mean, std = self._encode_pixels(torch.stack(pixels))
            latent_cache.add({k: {"mean": m, "std": s} for k, m, s in zip(chunk, mean, std)})
        by_key = {v: k for k, v in text_keys.items()}
        for start in range(0, len(todo_text), self.encode_batch_size):
            chunk = todo_text[start:start + self.encode_batch_size]
            captions = [by_key[k] for k in chunk]
            length = self.empty.shape[0]  # each caption's own chunks (the batch pads to its longest)
            text_cache.add({k: {"embedding": e[: self._chunks(c) * length]}
                            for k, c, e in zip(chunk, captions, self._encode_text(captions))})
        barrier()
        latent_cache.refresh()
        text_cache.refresh()
        entries = latent_cache.load(latent_keys.values())
        self.latents = {ik: (entries[k]["mean"], entries[k]["std"]) for ik, k in latent_keys.items()}
        entries = text_cache.load(text_keys.values())
        self.texts = {c: entries[k]["embedding"] for c, k in text_keys.items()}
        log.info("cache %s: %d latents, %d captions (this process encoded %d images, %d prompts)", self.cache_dir,
                 len(self.latents), len(self.texts), self.counts["vae_images"], self.counts["text_prompts"])

    # --- batches ----------------------------------------------------------------------------------

    def batch(self, samples: list[tuple[int, int]], generator: torch.Generator):
        """(latents (B, C, h, w), text embeddings (B, L, D)) for samples of (epoch, index); with ``encode_text``
        off, (latents, the B captions)."""
        captions = [pick_caption(self.items[i], self.seed, e, i) for e, i in samples]
        if self.latents:  # cached
            views = []
            for e, i in samples:  # center crop: only the flip is random, decided exactly as in _view
                r = self.transform.resolution
                _, _, flipped = self.transform.choose((r, r), sample_rng(self.seed, e, i, "transform"))
                views.append(self.latents[(i, flipped)])
            mean, std = torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])
            text = self._stack_text([self.texts[c] for c in captions]) if self.encode_text else captions
        else:
            pixels = [self.transform.apply(*self._view(e, i)) for e, i in samples]
            mean, std = self._encode_pixels(torch.stack(pixels))
            text = self._encode_text(captions) if self.encode_text else captions
        z = mean + std * torch.randn(mean.shape, generator=generator)  # a sample of q(z | x)
        return scale_latents(self.frozen, z), text


def encode_captions(text_encoder: torch.nn.Module, tokenizer, captions: list[str], max_chunks: int = 1) -> torch.Tensor:
    """(B, n·L, D): captions (plain text, up to ``max_chunks`` chunks, padded to the longest) as the text cache holds
    them, but encoded with gradients, for a text encoder that trains. ``text_encoder`` may be wrapped (DDP)."""
    per_caption = [prompt_chunks(tokenizer, caption, "plain", max_chunks)[0] for caption in captions]
    n = max(len(found) for found in per_caption)
    rows = [c for found in per_caption for c in found + [Chunk() for _ in range(n - len(found))]]  # (B·n)
    ids, mask = chunk_ids(tokenizer, rows)  # (B·n, L)
    config = getattr(text_encoder, "module", text_encoder).config
    device = next(text_encoder.parameters()).device
    mask = mask.to(device) if getattr(config, "use_attention_mask", False) else None
    z = hidden_states(text_encoder, ids.to(device), mask)  # (B·n, L, D)
    return z.reshape(len(captions), n * ids.shape[1], z.shape[-1])
