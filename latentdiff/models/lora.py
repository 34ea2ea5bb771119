"""LoRA (Hu et al. 2021): adapters trained through peft and saved as diffusers and/or kohya files; LoRA files of
either format fused into a model's UNet and text encoder, several at once, each with its weight.

Fusing is W ← W + weight · (alpha / rank) · up @ down per layer (a conv layer's down flattened to (r, in·kh·kw)),
what diffusers' ``load_lora_weights`` + ``fuse_lora`` and A1111 compute. File formats: :mod:`.lora_formats`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .lora_formats import WEIGHT_NAME, LoraFile, LoraLayer, read_lora, save_kohya_lora

log = logging.getLogger(__name__)

LORA_FORMATS = ("diffusers", "kohya", "both")  # what training writes (lora.format)
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP's attention projections
SHOWN_KEYS = 5  # unmatched keys named in the warning; the rest counted
MOSTLY_UNMATCHED = 0.5  # a file with more than this share of keys matching nothing is for another architecture

__all__ = ["LORA_FORMATS", "TEXT_ENCODER_TARGETS", "WEIGHT_NAME", "add_lora", "add_text_encoder_lora", "load_lora",
           "load_loras", "save_lora"]


# --- training: adapters through peft, and the files they are saved as -------------------------------

def add_lora(model: torch.nn.Module, cfg, target_modules: Optional[Sequence[str]] = None) -> list[torch.nn.Parameter]:
    """Freeze ``model``, add rank-r adapters (Gaussian A, zero B: the model's output is unchanged) to
    ``target_modules`` (default ``cfg.target_modules``); returns the trainable parameters.

    ``cfg`` has ``rank``, ``alpha`` and ``target_modules`` (training's ``LoraConfig``)."""
    from diffusers import ModelMixin
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    targets = list(target_modules if target_modules is not None else cfg.target_modules)
    if cfg.rank < 1:
        raise ValueError(f"lora.rank={cfg.rank} must be >= 1")
    model.requires_grad_(False)
    config = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=targets)
    if isinstance(model, ModelMixin):
        model.add_adapter(config)
    else:  # transformers' add_adapter wants a newer peft than diffusers; peft's injection adds the same adapter
        inject_adapter_in_model(config, model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"LoRA targets {targets} matched no {type(model).__name__} module; name Linear/Conv2d modules")
    return params


def add_text_encoder_lora(text_encoder: torch.nn.Module, cfg) -> list[torch.nn.Parameter]:
    """:func:`add_lora` on the text encoder's attention projections (q/k/v/out_proj), with ``cfg``'s rank and alpha."""
    return add_lora(text_encoder, cfg, TEXT_ENCODER_TARGETS)


def save_lora(unet: torch.nn.Module, folder: str | os.PathLike, text_encoder: Optional[torch.nn.Module] = None, *,
              format: str = "diffusers", name: str = "lora") -> list[Path]:
    """Write the LoRA adapters of ``unet`` (and ``text_encoder``) into ``folder``; returns the files written.

    ``format``: diffusers → ``pytorch_lora_weights.safetensors`` (diffusers' ``load_lora_weights``; the peft configs
    in its metadata, so alpha ≠ rank loads at the trained strength); kohya → ``<name>.safetensors`` (A1111, ComfyUI,
    kohya's scripts); both → both."""
    if format not in LORA_FORMATS:
        raise ValueError(f"LoRA format {format!r} is not one of {', '.join(LORA_FORMATS)}; choose one of them")
    folder = Path(folder)
    written = []
    if format in ("diffusers", "both"):
        written.append(_save_diffusers(unet, text_encoder, folder))
    if format in ("kohya", "both"):
        written.append(save_kohya_lora(folder / f"{name}.safetensors", unet, text_encoder))
    return written


def _save_diffusers(unet: torch.nn.Module, text_encoder: Optional[torch.nn.Module], folder: Path) -> Path:
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    # peft's key spelling (lora_A / lora_B) throughout: diffusers reads a file in one spelling, and its old one
    # ('.lora.down') names attention layers only, so a LoRA on conv layers would come back half-converted
    parts = dict(unet_lora_layers=get_peft_model_state_dict(unet),
                 unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
    if text_encoder is not None:
        state = get_peft_model_state_dict(text_encoder)
        parts.update(  # spelled from text_model, as CLIPTextModel's modules are in SD checkpoints and older stacks
            text_encoder_lora_layers={f"text_model.{k.removeprefix('text_model.')}": v for k, v in state.items()},
            text_encoder_lora_adapter_metadata=text_encoder.peft_config["default"].to_dict())
    StableDiffusionPipeline.save_lora_weights(folder, weight_name=WEIGHT_NAME, safe_serialization=True, **parts)
    return folder / WEIGHT_NAME


# --- inference: LoRA files fused into the weights --------------------------------------------------

def load_loras(model, loras: Sequence[tuple[Union[str, os.PathLike], float]]) -> list[dict]:
    """Fuse LoRA files (diffusers/peft or kohya/A1111, UNet and text-encoder halves) into the model's weights, each
    with its weight: W ← W + weight · (alpha / rank) · up @ down.

    ``model``: Components, or (unet, text_encoder) with text_encoder None to apply the UNet half only. Every file is
    read and checked before any weight changes. A file's keys that match nothing are named in one warning; a file
    made for another architecture (a layer of another shape, or most keys matching nothing) is a ValueError naming
    it. Returns per LoRA {"name", "path", "weight", "matched" (keys applied), "unmatched" (keys not applied)}."""
    unet, text_encoder = (model.unet, model.text_encoder) if hasattr(model, "unet") else model
    modules = {"unet": _module_index(unet, "unet")}
    if text_encoder is not None:
        modules["text_encoder"] = _module_index(text_encoder, "text_encoder")
    plans = [(_match(read_lora(path), modules), float(weight), path) for path, weight in loras]
    records = []
    for (pairs, unmatched), weight, path in plans:
        for module, layer in pairs:
            _fuse(module, layer, weight)
        if unmatched:
            shown = ", ".join(unmatched[:SHOWN_KEYS])
            more = f" … and {len(unmatched) - SHOWN_KEYS} more" if len(unmatched) > SHOWN_KEYS else ""
            log.warning("LoRA '%s': %d keys match nothing in this model and were not applied: %s%s", path,
                        len(unmatched), shown, more)
        path = Path(path)
        records.append({"name": path.stem if path.is_file() else path.name, "path": str(path.resolve()),
                        "weight": weight, "matched": sum(len(layer.keys) for _, layer in pairs),
                        "unmatched": unmatched})
    return records


def load_lora(unet: torch.nn.Module, path: str | os.PathLike, scale: float = 1.0,
              text_encoder: Optional[torch.nn.Module] = None) -> dict:
    """One LoRA file or folder fused in with weight ``scale`` (see :func:`load_loras`); without ``text_encoder``
    its text-encoder half is not applied (and named in the warning)."""
    return load_loras((unet, text_encoder), [(path, scale)])[0]


def _module_index(model: torch.nn.Module, half: str) -> dict[str, tuple[str, torch.nn.Module]]:
    """Every Linear/Conv2d of ``model`` under each spelling a LoRA file may use: its dotted path and kohya's
    '_'-joined one; the text encoder's both with and without transformers' ``text_model.`` level."""
    index = {}
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        spellings = {name}
        if half == "text_encoder":
            spellings |= {name.removeprefix("text_model."), f"text_model.{name.removeprefix('text_model.')}"}
        for spelled in spellings:
            index[spelled] = index[spelled.replace(".", "_")] = (name, module)
    return index


def _match(file: LoraFile, modules: dict) -> tuple[list[tuple[torch.nn.Module, LoraLayer]], list[str]]:
    """(module, layer) pairs to fuse and the keys that match nothing; ValueError if the file is for another model."""
    pairs, unmatched, other_half = [], list(file.unrecognized), 0
    for layer in file.layers:
        found = modules.get(layer.half, {}).get(layer.name)
        if found is None or layer.down is None or layer.up is None:
            unmatched += layer.keys
            other_half += len(layer.keys) if layer.half not in modules else 0
            continue
        name, module = found
        if not _fits(module.weight, layer.down, layer.up):
            delta, shape = (layer.up.shape[0], *layer.down.shape[1:]), tuple(module.weight.shape)
            key = next(k for k in layer.keys if not k.endswith(".alpha"))
            raise ValueError(f"LoRA '{file.path}' was made for another model: its layer {key} changes a "
                             f"{delta} weight but this model's {layer.half} {name} is {shape}; use a LoRA made for "
                             "this model (SD 1.x, SD 2.x and SDXL LoRAs do not mix)")
        pairs.append((module, layer))
    matched = sum(len(layer.keys) for _, layer in pairs)
    considered = matched + len(unmatched) - other_half  # a half the caller did not give does not count
    if not considered:
        raise ValueError(f"LoRA '{file.path}' has no layer for the UNet; apply it with the text encoder as well")
    if not pairs or len(unmatched) - other_half > MOSTLY_UNMATCHED * considered:
        raise ValueError(f"LoRA '{file.path}' does not fit this model: {len(unmatched) - other_half} of its "
                         f"{considered} keys match no layer (e.g. {', '.join(unmatched[:2]) or 'none'}); it was made "
                         "for another architecture (e.g. SDXL) or is no LoRA we read (LoHa, LoKr); use a LoRA made "
                         "for this model")
    return pairs, unmatched


def _fits(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> bool:
    """down (r, in[, kh, kw]) and up (out, r[, 1, 1]) make a ΔW of the weight's shape (out, in[, kh, kw])."""
    return (down.ndim == up.ndim == weight.ndim and tuple(down.shape[1:]) == tuple(weight.shape[1:])
            and tuple(up.shape[:2]) == (weight.shape[0], down.shape[0]) and all(s == 1 for s in up.shape[2:]))


@torch.no_grad()
def _fuse(module: torch.nn.Module, layer: LoraLayer, weight: float) -> None:
    w = module.weight  # (out, in) or (out, in, kh, kw)
    down = layer.down.to(w.device, torch.float32).flatten(1)  # (r, in·kh·kw)
    up = layer.up.to(w.device, torch.float32).flatten(1)  # (out, r)
    rank = down.shape[0]
    scale = weight * (layer.alpha if layer.alpha is not None else rank) / rank
    w.copy_((w.float() + scale * (up @ down).reshape(w.shape)).to(w.dtype))

