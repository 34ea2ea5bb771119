"""Textual-inversion embeddings (Gal et al. 2022, "An Image is Worth One Word"): learned input vectors for a new
word, read from the files diffusers and AUTOMATIC1111 write and added to the tokenizer and text encoder the way
diffusers' ``load_textual_inversion`` adds them (same token ids, same rows), so prompts give diffusers' images.

Formats (one embedding per file, n vectors of the text encoder's width D):

    diffusers  ``learned_embeds.safetensors`` (or ``.bin``): {token: (D,) or (n, D)}
    A1111      ``NAME.safetensors``: {"emb_params": (n, D)} (A1111 reads any file holding a single tensor);
               ``NAME.pt`` / ``.bin``: {"string_to_param": {"*": (n, D)}, "name": ..., "step": ...}
               (pickles: read only with ``allow_pickle``, through ``torch.load(weights_only=True)``)

An embedding of n vectors becomes the tokens ``token``, ``token_1`` … ``token_{n-1}`` (diffusers' naming); prompt
encoding expands ``token`` to all of them (:func:`latentdiff.pipelines.prompts.prompt_chunks`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from .folder import Components

log = logging.getLogger(__name__)

DIFFUSERS_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")  # what diffusers' training script writes
PICKLE_SUFFIXES = (".pt", ".bin")
SHOWN_KEYS = 3  # of a file that is not an embedding, in its error message
RETOKEN = "choose another token with token=... (PATH:TOKEN on the command line)"


def load_embedding(components: Components, path: str | os.PathLike, token: str | None = None,
                   allow_pickle: bool = False) -> dict:
    """Add the textual-inversion embedding at ``path`` (a file, or a folder holding diffusers'
    ``learned_embeds.safetensors``) to ``components``' tokenizer and text encoder, in place.

    ``token``: the word that stands for it in prompts; by default the file's stem (as A1111 names embeddings),
    or, for diffusers' ``learned_embeds.*`` files, the token stored in the file (as diffusers does). Returns
    ``{"token", "vectors" (how many), "path", "name" (the name stored in the file, else the stem)}``.

    Raises a one-line ValueError for a missing file, a pickle without ``allow_pickle``, a file that is not an
    embedding, vectors of another model's width, or a token the tokenizer already knows."""
    file = _resolve(Path(path).expanduser())
    name, vectors = _read(file, allow_pickle)  # (n, D)
    width = components.text_encoder.get_input_embeddings().weight.shape[-1]
    if vectors.shape[-1] != width:
        raise ValueError(f"embedding '{file}' has vectors of width {vectors.shape[-1]} but this model's text encoder "
                         f"takes {width}: it was made for another model")
    token = token if token is not None else (name if file.name in DIFFUSERS_NAMES else file.stem)
    names = vector_tokens(token, len(vectors))
    check_token(components.tokenizer, token, names, file)
    ids = add_vectors(components, names, vectors)
    log.info("embedding '%s' loaded as token '%s' (vectors: %d, token ids %s)", file, token, len(ids), ids)
    return {"token": token, "vectors": len(ids), "path": str(file.resolve()), "name": name}


def vector_tokens(token: str, n: int) -> list[str]:
    """The tokens of an n-vector embedding: ``token``, ``token_1`` … ``token_{n-1}`` (diffusers' naming)."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def _resolve(path: Path) -> Path:
    """The embedding file at ``path``: the file itself, or diffusers' file in a folder (safetensors first)."""
    if path.is_dir():
        found = [path / n for n in DIFFUSERS_NAMES if (path / n).is_file()]
        if not found:
            raise ValueError(f"embedding folder '{path}' has no {' or '.join(DIFFUSERS_NAMES)}; pass the embedding "
                             "file itself")
        return found[0]
    if not path.is_file():
        raise ValueError(f"embedding '{path}' does not exist; pass a textual-inversion file (.safetensors, or "
                         ".pt/.bin with allow_pickle)")
    return path


def _read(file: Path, allow_pickle: bool) -> tuple[str, torch.Tensor]:
    """(name stored in the file, else its stem; vectors (n, D) in float32) of an embedding file."""
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(f"embedding '{file}' is a pickle ({suffix}), which is not loaded by default; convert it "
                             "to safetensors or pass allow_pickle=True (--allow-pickle) if you trust the file")
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - unpickling fails in many ways; the reason is on its first line
            raise ValueError(f"cannot read embedding '{file}': {_first_line(error)}") from None
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(file, device="cpu")
        except Exception as error:  # noqa: BLE001 - SafetensorError and OSError name the problem
            raise ValueError(f"cannot read embedding '{file}' as safetensors: {_first_line(error)}") from None
    else:
        raise ValueError(f"embedding '{file}' is not a .safetensors file (nor, with allow_pickle, .pt or .bin)")
    name, vectors = _find_vectors(state, file)
    if vectors.is_complex() or not vectors.is_floating_point() or vectors.dim() not in (1, 2) or not vectors.numel():
        raise ValueError(f"embedding '{file}' holds a {tuple(vectors.shape)} {vectors.dtype} tensor, not vectors "
                         "(D,) or (n, D)")
    return name, vectors.detach().reshape(-1, vectors.shape[-1]).float()


def _find_vectors(state, file: Path) -> tuple[str, torch.Tensor]:
    """(name, tensor) in a loaded file, read as A1111's ``create_embedding_from_data`` and diffusers' loader read it."""
    if isinstance(state, torch.Tensor):  # torch.save(tensor): diffusers reads it with a token given
        return file.stem, state
    if not isinstance(state, dict) or not state:
        raise ValueError(f"embedding '{file}' holds {type(state).__name__}, not an embedding's tensors")
    if "clip_l" in state or "clip_g" in state:
        raise ValueError(f"embedding '{file}' is an SDXL embedding (clip_l, clip_g); this model has one text encoder")
    params = state.get("string_to_param")
    if params is not None:  # A1111's torch.save of {"string_to_param": {"*": (n, D)}, "name": ...}
        params = getattr(params, "_parameters", params)
        if not isinstance(params, dict) or len(params) != 1:
            raise ValueError(f"embedding '{file}' has {len(params) if isinstance(params, dict) else 'no'} "
                             "string_to_param terms; an embedding file holds exactly one")
        name = state.get("name")
        return name if isinstance(name, str) and name else file.stem, next(iter(params.values()))
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for key in ("emb_params", "string_to_param.*"):  # A1111's safetensors; string_to_param flattened to one key
        if key in tensors:
            return file.stem, tensors[key]
    if len(tensors) == 1:  # diffusers' {token: vectors}; A1111 reads any single tensor the same way
        [(key, vectors)] = tensors.items()
        return key, vectors
    keys = sorted(map(str, state))
    shown = ", ".join(keys[:SHOWN_KEYS]) + (f", … ({len(keys)} keys)" if len(keys) > SHOWN_KEYS else "")
    raise ValueError(f"'{file}' is not a textual-inversion embedding (keys: {shown}); expected one tensor "
                     "(emb_params, string_to_param or {token: vectors})")


def check_token(tokenizer, token: str, names: list[str], file: Path) -> None:
    """ValueError unless ``token`` and its vectors' tokens are new to the tokenizer and cannot be read as another
    embedding's vectors."""
    if not token.strip():
        raise ValueError(f"embedding '{file}': the token is empty; {RETOKEN}")
    vocab = tokenizer.get_vocab()
    # CLIP matches added tokens case-insensitively ('Cat' would replace the word 'cat'); its words end in '</w>'
    known = [t for t in (token, token.lower(), token.lower() + "</w>") if t in vocab]
    if known:
        raise ValueError(f"embedding '{file}': token '{token}' is already in the tokenizer's vocabulary "
                         f"('{known[0]}'); {RETOKEN}")
    added = tokenizer.added_tokens_encoder
    clash = next((n for n in names[1:] + [f"{token}_{len(names)}"] if n in vocab), None)
    base = re.fullmatch(r"(.+)_(\d+)", token)
    if clash is None and base and base.group(1) in added:
        clash = base.group(1)
    if clash is not None:
        raise ValueError(f"embedding '{file}': token '{token}' clashes with '{clash}' in the tokenizer (an "
                         f"embedding's vectors are TOKEN, TOKEN_1, …); {RETOKEN}")


def add_vectors(components: Components, names: list[str], vectors: torch.Tensor) -> list[int]:
    """Add ``names`` to the tokenizer and their rows (n, D) to the text encoder's input embeddings, in the
    encoder's dtype and device (diffusers' ``load_textual_inversion`` steps 7.3-7.4); returns the new ids."""
    tokenizer, encoder = components.tokenizer, components.text_encoder
    for name in names:  # one at a time, in order, as diffusers adds them: the same ids
        tokenizer.add_tokens(name)
    ids = tokenizer.convert_tokens_to_ids(names)
    table = encoder.get_input_embeddings()
    trainable = table.weight.requires_grad
    if max(ids) >= table.weight.shape[0]:
        # the new rows are overwritten below, so skip transformers' mean/covariance initialisation of them
        table = encoder.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
        table.weight.requires_grad_(trainable)  # a frozen encoder stays frozen
    with torch.no_grad():
        table.weight[ids] = vectors.to(table.weight)
    return ids


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
