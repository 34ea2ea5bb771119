"""Hires fix (A1111's): generate at the base size, upscale, then rework the upscaled image with img2img.

The upscale is either of the decoded image (``lanczos``: Lanczos resampling in pixels, then encoded by the VAE) or
of the latents themselves (``latent``: bilinear, no decode/encode round trip). The second pass uses each image's
seed again, so every image can be made again alone.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch.nn.functional as F
from PIL import Image

from ..models import decode_latents, to_uint8
from ..models.pixels import images_to_pixels
from .image_input import RESAMPLE
from .image_to_image import rework, sample_latents
from .settings import GenerationConfig
from .text_to_image import Generated, TextToImage

UPSCALERS = ("lanczos", "latent")


def hires_size(cfg: GenerationConfig, scale: float, factor: int) -> tuple[int, int]:
    """(height, width) of the second pass: the base size × ``scale``, rounded to a multiple of the VAE factor."""
    return (max(factor, round(cfg.height * scale / factor) * factor),
            max(factor, round(cfg.width * scale / factor) * factor))


def check_hires(scale: float, strength: float, hires_steps: Optional[int], upscaler: str) -> None:
    """One-line ValueErrors naming the setting; the strength and steps are checked again by the sampler's plan."""
    if not scale > 1:
        raise ValueError(f"hires_scale={scale!r} must be > 1: the factor the first image is upscaled by (e.g. 2)")
    if not 0 < strength <= 1:
        raise ValueError(f"hires_strength={strength!r} must be in (0, 1]: the fraction of the steps that repaint "
                         "the upscaled image (e.g. 0.5)")
    if hires_steps is not None and hires_steps < 1:
        raise ValueError(f"hires_steps={hires_steps!r} must be at least 1 (default: the first pass's steps)")
    if upscaler not in UPSCALERS:
        raise ValueError(f"hires_upscaler={upscaler!r} is not supported; choose one of {', '.join(map(repr, UPSCALERS))}")


def hires_fix(pipe: TextToImage, prompt: Union[str, Sequence[str]], *, scale: float = 2.0, strength: float = 0.5,
              hires_steps: Optional[int] = None, upscaler: str = "lanczos", settings: Optional[GenerationConfig] = None,
              progress: bool = False, callback=None, **overrides) -> list[Generated]:
    """Images for each prompt × num_images at the base size × ``scale``: a first pass at the base size, upscaled,
    then ``strength`` of ``hires_steps`` (default: the first pass's steps) steps of img2img at the larger size."""
    check_hires(scale, strength, hires_steps, upscaler)
    cfg, prompts, seeds = pipe.batch(prompt, settings, overrides)
    c = pipe.components
    height, width = hires_size(cfg, scale, c.vae_scale_factor)
    second = pipe.settings(**{**cfg.__dict__, "height": height, "width": width, "steps": hires_steps or cfg.steps})
    base = pipe.sample(prompts, seeds, cfg, progress=progress, callback=callback)  # (B, C, h, w)

    def encode(generators, dtype):
        if upscaler == "latent":
            return F.interpolate(base.to(dtype), size=(height // c.vae_scale_factor, width // c.vae_scale_factor),
                                 mode="bilinear", align_corners=False)
        images = [Image.fromarray(a).resize((width, height), RESAMPLE) for a in to_uint8(decode_latents(c, base))]
        return sample_latents(c, images_to_pixels(images), generators, len(prompts), dtype)

    latents = rework(pipe, prompts, seeds, second, strength, encode, progress=progress, callback=callback)
    out = pipe.decode(latents, prompts, seeds, cfg, hires_scale=scale, hires_strength=strength,
                      hires_steps=second.steps, hires_upscaler=upscaler)
    return out
