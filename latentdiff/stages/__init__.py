"""Training stages of the offline default model: 1. the VAE (``vae.py``), 2. the CLIP text encoder (``clip.py``).

Stages take in-memory data — uint8 images (N, H, W, 3) and a list of captions — so they do not depend on how
the images were made. The helpers below are shared by both stages.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


def as_uint8_images(images) -> torch.Tensor:
    """A uint8 tensor (N, H, W, 3) from a uint8 array or tensor; raises a ValueError naming what is wrong."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a uint8 array or tensor (N, H, W, 3), got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("images is empty; pass at least one image")
    return images


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float32 (B, 3, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def make_accelerator(device: str = "auto", mixed_precision: str = "auto"):
    """An ``accelerate.Accelerator`` on the chosen device; 'auto' precision: bf16 on a GPU that has it, else fp32."""
    from accelerate import Accelerator

    from ..models import pick_device

    if mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision={mixed_precision!r} is not supported; "
                         f"choose one of {', '.join(map(repr, MIXED_PRECISIONS))}")
    use_cpu = pick_device(device).type == "cpu"
    if mixed_precision == "auto":
        mixed_precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision)


def warmup_cosine(step: int, steps: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
