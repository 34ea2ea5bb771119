"""Making an image again from the parameters it carries: ours (the ``latentdiff`` JSON chunk: every setting, the
same pixels) or an AUTOMATIC1111 ``parameters`` text (its settings as far as they are ours; the rest listed)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Union

from .images import read_png_parameters
from .parameters import parse_parameters, settings_from_parameters
from .settings import GenerationConfig

SETTINGS = tuple(f.name for f in fields(GenerationConfig) if f.name != "num_images")
HIRES = ("hires_scale", "hires_strength", "hires_steps", "hires_upscaler")
DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
EXTRA_NETWORK = re.compile(r"<(lora|lyco|hypernet):([^>:]+)(?::[^>]*)?>")  # A1111's extra-network tags in a prompt
IMAGE_TO_IMAGE = "an image-to-image run: make it again with latentdiff img2img or inpaint and the input image"


@dataclass
class Regeneration:
    """What an image's parameters say about making it again."""

    source: str  # 'latentdiff' (our JSON) or 'a1111' (a parameters text)
    prompt: str
    settings: dict  # GenerationConfig fields
    model: Optional[str] = None  # a model path that exists here; None: use the one given, or the default
    model_hash: Optional[str] = None
    loras: list = field(default_factory=list)  # {"name", "hash", "weight", "path" (when it exists here)}
    embeddings: list = field(default_factory=list)  # {"token", "hash", "path" (when it exists here)}
    dtype: Optional[str] = None  # fp32 | bf16 | fp16, ours only
    hires: dict = field(default_factory=dict)  # hires_scale, hires_strength, hires_steps, hires_upscaler
    unhonoured: list = field(default_factory=list)  # 'Field: value (why)' of what will not be done
    notes: list = field(default_factory=list)  # other warnings (a model or LoRA not found here)


def read_regeneration(path: Union[str, os.PathLike]) -> Regeneration:
    """The :class:`Regeneration` of the image at ``path``; a one-line ValueError when it has no parameters."""
    ours, text = read_png_parameters(path)
    if ours is not None:
        return _from_ours(ours)
    return _from_a1111(settings_from_parameters(parse_parameters(text)))


def _from_ours(params: dict) -> Regeneration:
    out = Regeneration("latentdiff", str(params.get("prompt", "")),
                       {k: params[k] for k in SETTINGS if params.get(k) is not None},
                       model_hash=params.get("model_hash"), dtype=DTYPES.get(params.get("dtype")),
                       hires={k: params[k] for k in HIRES if params.get(k) is not None})
    model, _, lora_part = str(params.get("model", "")).partition(" + LoRA ")
    out.model = _local_model(model, out)
    loras = [dict(lora) for lora in params.get("loras") or ()]
    if lora_part and not loras:  # written before images named their LoRAs: '<path> x<weight>'
        lora_path, _, weight = lora_part.rpartition(" x")
        loras = [{"name": Path(lora_path).stem, "path": lora_path, "weight": float(weight)}]
    for lora in loras:
        _locate_lora(lora, out)
    out.loras = loras
    out.embeddings = [dict(e) for e in params.get("embeddings") or ()]
    for embedding in out.embeddings:
        if not embedding.get("path") or not Path(embedding["path"]).exists():
            embedding.pop("path", None)
            out.notes.append(f"the image used embedding '{embedding.get('token')}' which is not available here; pass "
                             "it with --embedding PATH:TOKEN")
    if params.get("strength") is not None:
        out.unhonoured.append(f"Denoising strength: {params['strength']} ({IMAGE_TO_IMAGE})")
    return out


def _from_a1111(found: tuple[dict, list]) -> Regeneration:
    settings, unhonoured = found
    prompt, tags = strip_extra_networks(settings.get("prompt", ""))
    negative, negative_tags = strip_extra_networks(settings.get("negative_prompt", ""))
    out = Regeneration("a1111", prompt, {k: settings[k] for k in SETTINGS if k in settings},
                       model_hash=settings.get("model_hash"), unhonoured=list(unhonoured),
                       hires={k: settings[k] for k in HIRES if k in settings})
    out.settings["negative_prompt"] = negative
    out.unhonoured += [f"<{kind}:{name}> in the prompt (pass the file with --lora)" for kind, name in tags + negative_tags]
    if "strength" in settings:
        out.unhonoured.append(f"Denoising strength: {settings['strength']} ({IMAGE_TO_IMAGE})")
    if settings.get("model"):
        out.model = _local_model(settings["model"], out)
    for lora in settings.get("loras", []):
        out.notes.append(f"the image used LoRA '{lora['name']}' (hash {lora['hash']}); pass it with --lora PATH")
    for embedding in settings.get("embeddings", []):
        out.notes.append(f"the image used embedding '{embedding['token']}' (hash {embedding['hash']}); pass it with "
                         "--embedding PATH:TOKEN")
    return out


def strip_extra_networks(prompt: str) -> tuple[str, list[tuple[str, str]]]:
    """``prompt`` without A1111's ``<lora:name:weight>`` (and lyco, hypernet) tags, and the (kind, name) removed."""
    tags = [(m.group(1), m.group(2)) for m in EXTRA_NETWORK.finditer(prompt)]
    text = EXTRA_NETWORK.sub("", prompt)
    return (re.sub(r"[ \t]{2,}", " ", text).strip() if tags else prompt), tags


def _local_model(model: str, out: Regeneration) -> Optional[str]:
    """``model`` when it is a path that exists here; else None, with a note."""
    if model and not model.startswith("<") and Path(model).exists():
        return model
    if model and not model.startswith("<"):
        out.notes.append(f"the image's model '{model}' is not available here; using --model (or the default)")
    return None


def _locate_lora(lora: dict, out: Regeneration) -> None:
    path = lora.get("path")
    if not path or not Path(path).exists():
        lora.pop("path", None)
        out.notes.append(f"the image used LoRA '{lora.get('name')}'" + (f" ({path})" if path else "")
                         + " which is not available here; pass it with --lora PATH")
