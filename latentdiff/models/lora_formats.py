"""LoRA files as users have them: diffusers/peft and kohya/A1111 keys read into one form, kohya files written.

A LoRA layer adds ΔW = (alpha / rank) · up @ down to one Linear or Conv2d weight W (Hu et al. 2021); a file holds
the (down, up[, alpha]) of each layer under one of these spellings:

- diffusers / peft: ``unet.<module path>.lora_A.weight`` / ``.lora_B.weight`` (also ``.lora.down/up.weight``,
  ``.lora_linear_layer.down/up.weight`` and the old attention-processor ``attn1.processor.to_q_lora.down.weight``),
  ``text_encoder.<module path>...`` (unprefixed: one model's adapter); alpha from the peft config diffusers stores
  in the file's metadata (``lora_adapter_metadata``), else alpha = rank.
- kohya / A1111 / ComfyUI: ``lora_unet_<module path with '_' for '.'>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha``, the text encoder as ``lora_te_text_model_encoder_layers_0_self_attn_q_proj...`` (``lora_te1_`` too);
  conv layers (LoCon) have a conv ``lora_down`` (k×k) and a 1×1 ``lora_up``.

Which model module a layer names is decided in :mod:`latentdiff.models.lora`, against the model itself.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' load_lora_weights looks for in a folder
KOHYA_HALVES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}  # lora_te2_: SDXL's
KOHYA_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
DIFFUSERS_HALVES = {"unet.": "unet", "text_encoder.": "text_encoder"}
DIFFUSERS_ROLES = re.compile(r"^(?P<name>.+?)(?:\.lora_A\.weight|\.lora\.down\.weight|\.lora_linear_layer\.down\.weight"
                             r"|_lora\.down\.weight)$|^(?P<up_name>.+?)(?:\.lora_B\.weight|\.lora\.up\.weight"
                             r"|\.lora_linear_layer\.up\.weight|_lora\.up\.weight)$|^(?P<alpha_name>.+?)\.alpha$")
PROCESSOR_NAMES = {  # attention-processor spelling → the module path, per half
    "unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    "text_encoder": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}


@dataclass
class LoraLayer:
    """One layer of a LoRA file: ΔW = (alpha / rank) · up @ down on the module ``name`` of the ``half``."""

    half: str  # "unet" | "text_encoder"
    name: str  # the module path as the file spells it: dotted (diffusers) or with '_' for '.' (kohya)
    down: Optional[torch.Tensor] = None  # (r, in) or conv (r, in, kh, kw)
    up: Optional[torch.Tensor] = None  # (out, r) or conv (out, r, 1, 1)
    alpha: Optional[float] = None  # None: alpha = rank (scale 1)
    keys: list[str] = field(default_factory=list)  # the file's keys this layer was read from


@dataclass
class LoraFile:
    """A LoRA file read: its layers, and the keys that are no LoRA (down, up, alpha) of a UNet/text-encoder module."""

    path: Path
    layers: list[LoraLayer]
    unrecognized: list[str]


def lora_file(path: str | os.PathLike) -> Path:
    """The .safetensors file of a LoRA given as the file or as a folder holding ``pytorch_lora_weights.safetensors``."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"LoRA '{path}' does not exist; pass a .safetensors file or a folder containing {WEIGHT_NAME}")
    if path.is_dir():
        if not (path / WEIGHT_NAME).is_file():
            raise ValueError(f"LoRA folder '{path}' has no {WEIGHT_NAME}; pass the .safetensors file itself")
        return path / WEIGHT_NAME
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA '{path}' is not a .safetensors file; convert it to safetensors or pass one that is")
    return path


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read a diffusers/peft or kohya/A1111 LoRA file (or a folder with ``pytorch_lora_weights.safetensors``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    file = lora_file(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(file))
    except (OSError, SafetensorError) as error:
        raise ValueError(f"cannot read LoRA '{path}': {str(error).splitlines()[0]}; pass a valid .safetensors file") \
            from None
    return parse_state_dict(state, metadata, Path(path))


def parse_state_dict(state: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> LoraFile:
    """The layers of a LoRA state dict in either spelling (see the module docstring)."""
    layers: dict[tuple[str, str], LoraLayer] = {}
    unrecognized = []
    for key, tensor in state.items():
        found = _kohya_key(key) or _diffusers_key(key)
        if found is None or (found[2] == "alpha" and tensor.numel() != 1):
            unrecognized.append(key)
            continue
        half, name, role = found
        layer = layers.setdefault((half, name), LoraLayer(half, name))
        layer.keys.append(key)
        if role == "alpha":
            layer.alpha = float(tensor.item())
        else:
            setattr(layer, role, tensor)
    peft_configs = _peft_configs(metadata)
    for layer in layers.values():
        if layer.alpha is None and layer.half in peft_configs and layer.down is not None:
            layer.alpha = _peft_alpha(peft_configs[layer.half], layer.name, layer.down.shape[0])
    return LoraFile(path, list(layers.values()), unrecognized)


def _kohya_key(key: str) -> Optional[tuple[str, str, str]]:
    base, _, suffix = key.partition(".")
    prefix = next((p for p in KOHYA_HALVES if base.startswith(p)), None)
    if prefix is None or suffix not in KOHYA_ROLES:
        return None
    return KOHYA_HALVES[prefix], base[len(prefix):], KOHYA_ROLES[suffix]


def _diffusers_key(key: str) -> Optional[tuple[str, str, str]]:
    prefix = next((p for p in DIFFUSERS_HALVES if key.startswith(p)), "")
    match = DIFFUSERS_ROLES.match(key[len(prefix):])
    if match is None:
        return None
    role = "down" if match["name"] else "up" if match["up_name"] else "alpha"
    name = match["name"] or match["up_name"] or match["alpha_name"]
    # no prefix: one model's adapter alone (diffusers' save_lora_adapter, the first attention-processor files)
    half = DIFFUSERS_HALVES[prefix] if prefix else "text_encoder" if name.startswith("text_model.") else "unet"
    if name.endswith(("to_q", "to_k", "to_v", "to_out")) and key.endswith(("_lora.down.weight", "_lora.up.weight")):
        head, _, processor_name = name.rpartition(".")  # 'attn1.processor.to_q' (UNet) / 'self_attn.to_q' (text)
        name = f"{head.removesuffix('.processor')}.{PROCESSOR_NAMES[half][processor_name]}"
    return half, name, role


def _peft_configs(metadata: dict[str, str]) -> dict[str, dict]:
    """The peft LoraConfig of each half that diffusers stores in the file's metadata ('unet.lora_alpha', ...)."""
    try:
        raw = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        return {}
    if isinstance(raw, dict) and "lora_alpha" in raw:  # one model's adapter alone (diffusers' save_lora_adapter)
        return {"unet": raw}
    configs: dict[str, dict] = {}
    for key, value in raw.items() if isinstance(raw, dict) else ():
        prefix, _, name = key.partition(".")
        if prefix in ("unet", "text_encoder"):
            configs.setdefault(prefix, {})[name] = value
    return configs


def _peft_alpha(config: dict, module: str, rank: int) -> Optional[float]:
    """The alpha that gives peft's scale for ``module`` (alpha_pattern as peft matches it; rsLoRA: alpha/√r)."""
    alpha = config.get("lora_alpha")
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    if alpha is None:
        return None
    return float(alpha) * (rank ** 0.5 if config.get("use_rslora") else 1.0)


# --- writing: kohya / A1111 files from peft adapters -------------------------------------------------

def adapter_layers(model: torch.nn.Module,
                   adapter: str = "default") -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module path: (down, up, alpha)} of the peft LoRA adapter in ``model``, alpha such that alpha / rank is the
    adapter's scale (kohya's convention)."""
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    found = {}
    for name, module in model.named_modules():
        if isinstance(module, PeftLoraLayer) and adapter in module.lora_A:
            rank = module.r[adapter]
            found[name] = (module.lora_A[adapter].weight, module.lora_B[adapter].weight,
                           float(module.scaling[adapter]) * rank)
    return found


def kohya_name(half: str, module: str) -> str:
    """kohya's name of a module: 'lora_unet_' / 'lora_te_' + its path with '_' for '.' (the text encoder's path from
    ``text_model``, as SD checkpoints spell CLIPTextModel's modules)."""
    if half == "text_encoder":
        return "lora_te_" + (module if module.startswith("text_model.") else f"text_model.{module}").replace(".", "_")
    return "lora_unet_" + module.replace(".", "_")


def save_kohya_lora(path: str | os.PathLike, unet: torch.nn.Module,
                    text_encoder: Optional[torch.nn.Module] = None) -> Path:
    """Write the peft LoRA adapters of ``unet`` (and ``text_encoder``) as one kohya-format .safetensors file that
    A1111, ComfyUI, kohya's scripts and diffusers' ``load_lora_weights`` read: ``.lora_down.weight``,
    ``.lora_up.weight`` and ``.alpha`` per layer, with ``ss_network_dim`` / ``ss_network_alpha`` metadata."""
    from safetensors.torch import save_file

    tensors = {}
    shapes = {False: Counter(), True: Counter()}  # conv k×k (LoCon)? → (rank, alpha) → layers
    for half, model in (("unet", unet), ("text_encoder", text_encoder)):
        for module, (down, up, alpha) in (adapter_layers(model) if model is not None else {}).items():
            name = kohya_name(half, module)
            tensors[f"{name}.lora_down.weight"] = down.detach().cpu().contiguous()
            tensors[f"{name}.lora_up.weight"] = up.detach().cpu().contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
            shapes[down.ndim == 4 and tuple(down.shape[2:]) != (1, 1)][(down.shape[0], alpha)] += 1
    if not tensors:
        raise ValueError("the model has no LoRA adapter to save; add one (lora.enabled) before saving")
    metadata = {"ss_network_module": "networks.lora", "ss_training_comment": "written by latentdiff"}
    (dim, alpha), _ = (shapes[False] or shapes[True]).most_common(1)[0]
    metadata.update(ss_network_dim=str(dim), ss_network_alpha=_number(alpha))
    if shapes[True]:
        (conv_dim, conv_alpha), _ = shapes[True].most_common(1)[0]
        metadata["ss_network_args"] = json.dumps({"conv_dim": str(conv_dim), "conv_alpha": _number(conv_alpha)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def _number(value: float) -> str:
    return f"{value:g}"  # 8.0 → '8', as kohya's metadata writes an integer alpha
