"""Images in: any file, mode and size to an 8-bit RGB image of the size wanted, with notes of what was done.

    read_image(path) -> (Image.Image, notes)                             # EXIF, transparency on white, 16-bit, ...
    fit_image(image, size, multiple_of=1) -> (Image.Image, notes)        # resize shorter side, center crop
    load_edit_image(path, size, multiple_of=1) -> (Image.Image, notes)   # both
    default_edit_size(components) -> (height, width)                     # unet.sample_size × VAE factor
    encode_image(components, image) -> (1, C, H/f, W/f)                  # scaled posterior mean
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..models import Components, encode_images, scale_latents
from ..models.pixels import MAX_LEVEL, image_to_pixels

DECODERS = ("JPEG", "PNG", "WEBP", "BMP")  # Pillow formats tried, whatever the extension says
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
WHITE = (255, 255, 255, 255)
UINT16_PER_UINT8 = 65535 / MAX_LEVEL  # 257: 16-bit levels are scaled down, not clipped
RESAMPLE = Image.Resampling.LANCZOS  # antialiased when shrinking

EXIF_ORIENTATION = 0x0112
Size = Union[int, tuple[int, int]]  # a side, or (height, width)
MODE_NAMES = {"1": "1-bit", "L": "grayscale (L)", "P": "palette (P)", "CMYK": "CMYK", "YCbCr": "YCbCr",
              "LAB": "Lab", "HSV": "HSV", "I": "32-bit integer grayscale (I)", "F": "floating-point grayscale (F)"}


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: integer (16-bit) gray scaled by 1/257 with rounding; any transparency composited on white."""
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I
        levels = np.asarray(image).astype(np.float64) / UINT16_PER_UINT8
        image = Image.fromarray(np.clip(np.rint(levels), 0, MAX_LEVEL).astype(np.uint8))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes) -> Image.Image:
    """Fully decode image bytes (truncation raises), apply EXIF orientation, return 8-bit RGB."""
    with Image.open(io.BytesIO(data), formats=DECODERS) as image:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


def _pair(size: Size) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(height), int(width)


def default_edit_size(components: Components) -> tuple[int, int]:
    """(height, width) in pixels that the UNet was built for: sample_size × the VAE factor."""
    side = components.unet.config.sample_size * components.vae_scale_factor
    return side, side


def _mode_note(image: Image.Image) -> str | None:
    mode = image.mode
    if mode in ALPHA_MODES or "transparency" in image.info:
        return f"converted {mode} with transparency to RGB on white"
    if mode.startswith("I;16"):
        return f"converted 16-bit grayscale ({mode}) to 8-bit RGB"
    if mode != "RGB":
        return f"converted {MODE_NAMES.get(mode, mode)} to RGB"
    return None


def read_image(path: Union[str, os.PathLike]) -> tuple[Image.Image, list[str]]:
    """The image file at ``path`` as 8-bit RGB: EXIF orientation applied, transparency put on white. Returns (image,
    notes) where notes say, in words, every change made. ValueError (one line) when it cannot be read as an image."""
    path = Path(path)
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data), formats=DECODERS) as opened:
            opened.load()
            rotated = opened.getexif().get(EXIF_ORIENTATION, 1) in range(2, 9)
            image = ImageOps.exif_transpose(opened)
    except FileNotFoundError:
        raise ValueError(f"image '{path}' does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"image '{path}' is a folder; pass an image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        kinds = ", ".join(DECODERS)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot read image '{path}' ({reason}); use a {kinds} file") from None

    notes = []
    if rotated:
        notes.append("rotated by its EXIF orientation")
    note = _mode_note(image)
    if note:
        notes.append(note)
    return to_rgb(image), notes


def fit_image(image: Image.Image, size: Size, *, multiple_of: int = 1,
              resample=RESAMPLE) -> tuple[Image.Image, list[str]]:
    """``image`` at ``size`` (height, width): the shorter side resized (Lanczos) to cover it, then center-cropped.
    Returns (image, notes), the notes saying what was done; ValueError unless the size is a positive multiple of
    ``multiple_of`` (the VAE factor)."""
    height, width = _pair(size)
    if height < 1 or width < 1 or height % multiple_of or width % multiple_of:
        raise ValueError(f"image size {width}×{height} (width×height) must be positive multiples of the VAE factor "
                         f"{multiple_of}")
    w, h = image.size
    scale = max(width / w, height / h)  # cover the target, then crop the excess of the longer side
    resized = (max(width, round(w * scale)), max(height, round(h * scale)))
    steps = []
    if resized != (w, h):
        image = image.resize(resized, resample)
        steps.append(f"{'upscaled' if scale > 1 else 'resized'} {w}×{h} → {resized[0]}×{resized[1]}")
    if resized != (width, height):
        left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
        steps.append(f"center-cropped to {width}×{height}")
    return image, [", ".join(steps)] if steps else []


def load_edit_image(path: Union[str, os.PathLike], size: Size, *,
                    multiple_of: int = 1) -> tuple[Image.Image, list[str]]:
    """The image at ``path`` as 8-bit RGB of ``size``: :func:`read_image`, then :func:`fit_image`. Returns (image,
    notes); ValueError (one line) when the file cannot be read as an image or the size is not allowed."""
    height, width = _pair(size)
    if height < 1 or width < 1 or height % multiple_of or width % multiple_of:
        raise ValueError(f"image size {width}×{height} (width×height) must be positive multiples of the VAE factor "
                         f"{multiple_of}")
    image, notes = read_image(path)
    image, fitted = fit_image(image, size, multiple_of=multiple_of)
    return image, notes + fitted


def encode_image(components: Components, image: Image.Image) -> torch.Tensor:
    """Diffusion latents (1, C, H/f, W/f) float32 of an image: the scaled mean of q(z | x), as null-text
    inversion encodes (Mokady et al. 2022, official code: ``vae.encode(image).latent_dist.mean``)."""
    factor = components.vae_scale_factor
    if image.width % factor or image.height % factor:
        raise ValueError(f"image size {image.width}×{image.height} is not a multiple of the VAE factor {factor}; "
                         "load it with load_edit_image")
    mean, _ = encode_images(components, image_to_pixels(image)[None])
    return scale_latents(components, mean).float().clone()  # clone: a normal tensor, usable with autograd
