"""LoRA (Hu et al. 2021) on the UNet through peft, saved and loaded in diffusers' LoRA format."""

from __future__ import annotations

import os
from pathlib import Path

import torch

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' load_lora_weights looks for


def add_lora(unet: torch.nn.Module, cfg) -> list[torch.nn.Parameter]:
    """Freeze the UNet, add rank-r adapters to ``cfg.target_modules``; returns the trainable parameters.

    ``cfg`` has ``rank``, ``alpha`` and ``target_modules`` (training's ``LoraConfig``)."""
    from peft import LoraConfig as PeftLoraConfig

    if cfg.rank < 1:
        raise ValueError(f"lora.rank={cfg.rank} must be >= 1")
    unet.requires_grad_(False)
    unet.add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                    target_modules=list(cfg.target_modules)))
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"lora.target_modules={cfg.target_modules} matched no UNet module")
    return params


def save_lora(unet: torch.nn.Module, folder: str | os.PathLike) -> Path:
    """Write the UNet's LoRA weights as diffusers' ``pytorch_lora_weights.safetensors``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, weight_name=WEIGHT_NAME,
                                              safe_serialization=True)
    return Path(folder) / WEIGHT_NAME


def load_lora(unet: torch.nn.Module, path: str | os.PathLike, scale: float = 1.0) -> None:
    """Apply a LoRA file or folder (diffusers / kohya formats that diffusers reads) to the UNet, fused in."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    if not path.exists():
        raise ValueError(f"LoRA '{path}' does not exist; pass a .safetensors file or a folder containing {WEIGHT_NAME}")
    if path.suffix != ".safetensors" and not (path / WEIGHT_NAME).is_file():
        raise ValueError(f"LoRA '{path}' has no {WEIGHT_NAME}; pass the .safetensors file itself")
    try:
        state, alphas = StableDiffusionPipeline.lora_state_dict(str(path), use_safetensors=True)
        StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=unet, adapter_name="lora")
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"cannot load LoRA '{path}': {str(error).splitlines()[0]}") from None
    unet.fuse_lora(lora_scale=scale)
    unet.unload_lora()
