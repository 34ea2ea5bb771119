"""Prompts → text-encoder embeddings (shared by generation, training and editing).

A prompt is parsed (A1111 emphasis syntax or plain text, :mod:`.prompt_syntax`), tokenized, and cut into chunks
of the encoder's window (``model_max_length`` − 2 tokens: 75 for Stable Diffusion); each chunk is encoded with
its own start and end tokens, padded as the tokenizer pads, weighted (:func:`emphasize`), and the chunks'
embeddings are concatenated along the sequence: a prompt of n chunks gives (n·L, D). One chunk is exactly the
single-window encoding diffusers' pipelines use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..models import Components
from .prompt_syntax import is_break, malformed, parse

log = logging.getLogger(__name__)

SHOWN_CHARACTERS = 80  # of a prompt (or of its dropped words) in the truncation warning
COMMA_BACKTRACK = 20  # a full chunk is cut after its last comma when that comma is at most this many tokens back


@dataclass
class Chunk:
    """Up to a window of token ids (no start/end tokens) and each token's emphasis weight."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def window(tokenizer) -> int:
    """Tokens of text one chunk holds: the encoder's context less the start and end tokens."""
    return tokenizer.model_max_length - 2


def prompt_chunks(tokenizer, prompt: str, syntax: str = "plain",
                  max_chunks: Optional[int] = None) -> tuple[list[Chunk], list[int]]:
    """(chunks, dropped token ids) of ``prompt``, split as A1111 splits a long prompt.

    Tokens fill a chunk up to :func:`window`; when a chunk is full and its last comma is at most
    ``COMMA_BACKTRACK`` tokens back, the words after that comma move to the next chunk. ``BREAK`` closes the
    chunk at once (an empty chunk when nothing precedes it). A prompt always has at least one chunk. With
    ``max_chunks``, the last allowed chunk is filled without moving words and whatever follows is dropped.

    A multi-vector embedding's token stands for all its vectors (:func:`embedding_vectors`), each with the
    token's weight; as in A1111's ``tokenize_line`` (``modules/sd_hijack_clip.py``), vectors that do not fit in
    the current chunk close it and start the next, whole (unless there are more vectors than a chunk holds, or
    the chunk is the last allowed one: then they fill it and the rest follow, as words do).
    """
    size = window(tokenizer)
    comma = tokenizer.get_vocab().get(",</w>")
    vectors = embedding_vectors(tokenizer)
    chunks: list[Chunk] = []
    chunk, last_comma = Chunk(), -1

    def close() -> Chunk:
        nonlocal last_comma
        chunks.append(chunk)
        last_comma = -1
        return Chunk()

    for piece in parse(prompt, syntax):
        if is_break(piece):
            chunk = close()
            continue
        text, weight = piece
        # ids from the tokenizer, not tokenize() + convert_tokens_to_ids(): those lose an added token's case
        for token in tokenizer(text, add_special_tokens=False, verbose=False).input_ids if text else []:
            group = vectors.get(token, (token,))  # (token,) or an embedding's (token, token_1, …)
            movable = max_chunks is None or len(chunks) < max_chunks - 1  # words may move to a next chunk
            if token == comma:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == size and last_comma != -1 and size - last_comma <= COMMA_BACKTRACK and movable:
                cut = last_comma + 1
                moved = Chunk(chunk.tokens[cut:], chunk.weights[cut:])
                del chunk.tokens[cut:], chunk.weights[cut:]
                close()
                chunk = moved
            if len(chunk.tokens) + len(group) > size >= len(group) and movable:
                chunk = close()  # an embedding's vectors are not split across chunks (A1111)
            for vector in group:
                if len(chunk.tokens) == size:
                    chunk = close()
                chunk.tokens.append(vector)
                chunk.weights.append(weight)
    if chunk.tokens or not chunks:
        close()
    if max_chunks is not None and len(chunks) > max_chunks:
        return chunks[:max_chunks], [t for c in chunks[max_chunks:] for t in c.tokens]
    return chunks, []


def embedding_vectors(tokenizer) -> dict[int, tuple[int, ...]]:
    """Added token id → the ids of all its vectors, for each multi-vector embedding in the tokenizer: token ``t``
    stands for ``t t_1 … t_{n-1}`` when those are added tokens (diffusers' ``maybe_convert_prompt`` rule, on ids)."""
    added = tokenizer.added_tokens_encoder  # text → id
    found = {}
    for text, first in added.items():
        ids = [first]
        while f"{text}_{len(ids)}" in added:
            ids.append(added[f"{text}_{len(ids)}"])
        if len(ids) > 1:
            found[first] = tuple(ids)
    return found


def chunk_count(tokenizer, prompt: str, syntax: str = "plain") -> int:
    """How many chunks ``prompt`` needs."""
    return len(prompt_chunks(tokenizer, prompt, syntax)[0])


def tokenize(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (B, L) of one window per prompt (plain text), longer prompts truncated with a
    warning giving their length and the dropped words (editing's token alignment works on these ids)."""
    chunks = [_first_chunk(tokenizer, prompt, "plain") for prompt in prompts]
    return chunk_ids(tokenizer, chunks)


def _first_chunk(tokenizer, prompt: str, syntax: str) -> Chunk:
    [chunk], dropped = prompt_chunks(tokenizer, prompt, syntax, max_chunks=1)
    if dropped:
        warn_truncated(tokenizer, prompt, dropped, chunk)
    return chunk


def warn_truncated(tokenizer, prompt: str, dropped: list[int], *kept: Chunk) -> None:
    length = sum(len(c.tokens) for c in kept) + len(dropped) + 2  # start and end tokens included
    log.warning("prompt longer than %d tokens, truncated (%d tokens, %d characters): %r; dropped: %r",
                tokenizer.model_max_length * len(kept), length, len(prompt), shorten(prompt),
                shorten(tokenizer.decode(dropped)))


def chunk_ids(tokenizer, chunks: Sequence[Chunk]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (N, L): start token, the chunk's tokens, end token, then the tokenizer's pad."""
    length = tokenizer.model_max_length
    ids = torch.full((len(chunks), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(chunks), length), dtype=torch.long)
    for row, chunk in enumerate(chunks):
        tokens = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


def shorten(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """``text`` cut to its first ``limit`` characters, with '…' when cut (for warnings about long prompts)."""
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's emphasis ("Original"): each token's embedding row scaled by its weight, then the whole chunk
    rescaled so its mean over all rows and channels is the unweighted one. z (N, L, D), weights (N, L); chunks
    whose weights are all 1 are returned untouched (bit for bit). Computed in float32.

    A1111 takes the mean over its whole batch; here it is per chunk, so an image does not depend on the other
    prompts of its batch (the same number when a batch repeats one prompt, as A1111's usually does)."""
    weighted = (weights != 1).any(dim=1)  # (N,)
    if not weighted.any():
        return z
    z32 = z[weighted].float()  # (n, L, D)
    before = z32.mean(dim=(1, 2), keepdim=True)
    scaled = z32 * weights[weighted].to(z32)[:, :, None]
    scaled = scaled * (before / scaled.mean(dim=(1, 2), keepdim=True))
    out = z.clone()
    out[weighted] = scaled.to(z.dtype)
    return out


def check_clip_skip(clip_skip: int, text_encoder) -> None:
    """ValueError unless 1 ≤ clip_skip ≤ the text encoder's layers."""
    layers = text_encoder.config.num_hidden_layers
    if not isinstance(clip_skip, int) or not 1 <= clip_skip <= layers:
        raise ValueError(f"clip_skip={clip_skip} must be an integer from 1 (off) to {layers}, the text encoder's "
                         "layers (A1111 numbering: 2 = the penultimate layer)")


def hidden_states(text_encoder, ids: torch.Tensor, mask: Optional[torch.Tensor], clip_skip: int = 1) -> torch.Tensor:
    """The encoder's output (N, L, D); with ``clip_skip`` k > 1, the hidden state k layers from the end (A1111's
    'Clip skip', diffusers' ``clip_skip=k-1``) through the final layer norm."""
    if clip_skip == 1:
        return text_encoder(ids, attention_mask=mask)[0]
    out = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_norm(out.hidden_states[-clip_skip])


@torch.inference_mode()
def encode_prompts(components: Components, prompts: Sequence[str], *, syntax: str = "plain", clip_skip: int = 1,
                   max_chunks: Optional[int] = 1, chunks: Optional[int] = None) -> torch.Tensor:
    """Text embeddings (B, n·L, D) in the model's dtype, every prompt padded to the same n chunks with the empty
    prompt's chunk (n: the most any prompt needs, or ``chunks`` when that is more).

    ``max_chunks``: chunks kept per prompt (a longer prompt is truncated with a warning; None keeps all).
    One chunk of plain text encodes exactly as a single-window text encoder call."""
    tokenizer, encoder = components.tokenizer, components.text_encoder
    check_clip_skip(clip_skip, encoder)
    per_prompt = []
    for prompt in dict.fromkeys(prompts) if syntax == "a1111" else ():
        if malformed(prompt):
            log.warning("prompt %r has an unmatched bracket or a weight that is not a number; read as A1111 reads "
                        "it (an unclosed bracket weights the rest, a stray one is text); escape literal brackets "
                        "as \\( \\) or use prompt_syntax plain", shorten(prompt))
    for prompt in prompts:
        found, dropped = prompt_chunks(tokenizer, prompt, syntax, max_chunks)
        if dropped:
            warn_truncated(tokenizer, prompt, dropped, *found)
        per_prompt.append(found)
    n = max([chunks or 1] + [len(found) for found in per_prompt])
    rows = [c for found in per_prompt for c in found + [Chunk() for _ in range(n - len(found))]]  # (B·n)
    ids, mask = chunk_ids(tokenizer, rows)
    weights = torch.ones(ids.shape, dtype=torch.float32)  # (B·n, L): start, end and padding keep weight 1
    for row, c in enumerate(rows):
        weights[row, 1 : 1 + len(c.tokens)] = torch.tensor(c.weights, dtype=torch.float32)
    mask = mask.to(encoder.device) if getattr(encoder.config, "use_attention_mask", False) else None
    z = hidden_states(encoder, ids.to(encoder.device), mask, clip_skip)  # (B·n, L, D)
    z = emphasize(z, weights.to(z.device))
    return z.reshape(len(prompts), n * ids.shape[1], z.shape[-1]).to(encoder.dtype)
