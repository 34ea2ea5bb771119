"""What a generating command loads and reads besides its settings: the model with its LoRAs and embeddings, and
the parameters of an image to make again (--from-png)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

from .common import quiet_libraries, resolve_model

log = logging.getLogger("latentdiff.cli")


def load_pipeline(args, device=None):
    from ..pipelines import Pipeline

    model = resolve_model(args.model)
    quiet_libraries()
    return Pipeline.from_pretrained(model, dtype=args.dtype, device=device or args.device,
                                    allow_pickle=args.allow_pickle, lora=lora_choices(args),
                                    embeddings=embedding_choices(args), vae=args.vae,
                                    prediction_type=args.prediction_type,
                                    vae_tiling=args.vae_tiling, vae_slicing=args.vae_slicing)


def lora_choices(args) -> list[tuple[Path, float]]:
    """(path, weight) of each --lora, --lora-scale where it names no weight."""
    parsed = [parse_lora(text) for text in args.lora or ()]
    return [(path, args.lora_scale if weight is None else weight) for path, weight in parsed]


def parse_lora(text: str) -> tuple[Path, Optional[float]]:
    """``PATH[:WEIGHT]`` → (path, weight or None). The part after the last ':' is a weight only when it is a finite
    number and the whole text is no existing path: 'C:\\loras\\x.safetensors' and 'a:b/x.safetensors' stay paths."""
    head, sep, tail = str(text).rpartition(":")
    if sep and head and not Path(text).exists():
        try:
            weight = float(tail)
        except ValueError:
            return Path(text), None
        if math.isfinite(weight):
            return Path(head), weight
    return Path(text), None


def embedding_choices(args) -> list[tuple[Path, Optional[str]]]:
    """(path, token or None) of each --embedding PATH[:TOKEN]; a ':' ends the path only when the whole text is no
    existing file and what follows is a token (no '/' or '\\')."""
    out = []
    for text in getattr(args, "embedding", None) or ():
        head, sep, tail = str(text).rpartition(":")
        if sep and head and tail and not Path(text).exists() and not any(c in tail for c in "/\\"):
            out.append((Path(head), tail))
        else:
            out.append((Path(text), None))
    return out


def apply_png(args) -> None:
    """Fill the options not given on the command line from the parameters of the image ``args.from_png``."""
    from ..core.samplers import get_sampler
    from ..pipelines.regenerate import read_regeneration

    found = read_regeneration(args.from_png)
    if not args.prompt:
        args.prompt = [found.prompt]
    for key, value in found.settings.items():
        if getattr(args, key) is None and key != "eta":
            setattr(args, key, value)
    if args.eta is None and "eta" in found.settings and get_sampler(args.sampler or "ddim").takes_eta:
        args.eta = found.settings["eta"]
    for key, value in found.hires.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model is None:
        args.model = found.model
    if args.dtype == "auto" and found.dtype is not None:
        args.dtype = found.dtype
    usable = [lora for lora in found.loras if lora.get("path")]
    if not args.lora and usable:  # each with its weight, written so that parse_lora reads it back
        args.lora = [f"{lora['path']}:{float(lora.get('weight', 1.0))!r}" for lora in usable]
    usable = [e for e in found.embeddings if e.get("path")]
    if not getattr(args, "embedding", None) and usable:
        args.embedding = [f"{e['path']}:{e['token']}" for e in usable]
    args.png_model_hash = found.model_hash
    for note in found.notes:
        log.warning("%s", note)
    if found.unhonoured:
        log.warning("'%s': not honoured: %s", args.from_png, "; ".join(found.unhonoured))
