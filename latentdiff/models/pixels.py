"""Pixels between 8-bit images and the VAE's range: uint8 [0, 255] ↔ float [-1, 1], in one place.

The VAE takes and returns images in [-1, 1], channels first; images on disk and in PIL are uint8, channels last.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

MAX_LEVEL = 255  # 8-bit
HALF_LEVEL = MAX_LEVEL / 2  # 127.5: uint8 x ↔ x / 127.5 − 1


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
    return images.permute(0, 3, 1, 2).float().div(HALF_LEVEL).sub(1.0)


def image_to_pixels(image: Image.Image) -> torch.Tensor:
    """An image (any mode, converted to RGB) → float32 (3, H, W) in [-1, 1], contiguous."""
    array = np.array(image.convert("RGB"))  # a writable copy, as torch.from_numpy wants
    return to_pixels(torch.from_numpy(array)[None])[0].contiguous()


def images_to_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """Images of one size → float32 (B, 3, H, W) in [-1, 1]."""
    return torch.stack([image_to_pixels(image) for image in images])


def from_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in ≈[-1, 1] → uint8 (B, H, W, 3), clamped and rounded."""
    return ((pixels.clamp(-1, 1) + 1) * HALF_LEVEL).round().to(torch.uint8).permute(0, 2, 3, 1)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] (a VAE decode, rescaled) → list of (H, W, 3) uint8 arrays, rounded as diffusers rounds."""
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    return [(a * MAX_LEVEL).round().astype("uint8") for a in array]
