"""The VAE between images and diffusion latents: encode to q(z | x), scale by the VAE config, decode."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from .folder import Components
from .pixels import images_to_pixels, to_uint8

log = logging.getLogger(__name__)


@torch.inference_mode()
def encode_images(components: Components, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE's latent distribution q(z | x) for images in [-1, 1], each (B, C, H/f, W/f)."""
    vae = components.vae
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def scale_latents(components: Components, z: torch.Tensor) -> torch.Tensor:
    """VAE latents → diffusion latents: (z − shift) × scaling_factor, read from the VAE config."""
    config = components.vae.config
    shift = getattr(config, "shift_factor", None) or 0.0
    return (z - shift) * config.scaling_factor


@torch.inference_mode()
def decode_latents(components: Components, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode of diffusion latents to images in [0, 1], (B, 3, H, W) float32.

    In the VAE's dtype, as diffusers' StableDiffusionPipeline decodes; should an fp16 decode overflow (some VAEs
    do: SDXL's, marked ``force_upcast``), that batch is decoded again in fp32 instead of returning NaNs."""
    vae = components.vae
    latents = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):
        latents = latents + vae.config.shift_factor
    images = vae.decode(latents.to(vae.dtype)).sample
    if vae.dtype == torch.float16 and not torch.isfinite(images).all():
        log.warning("the fp16 VAE decode overflowed; decoding again in fp32")
        torch.nn.Module.to(vae, torch.float32)  # nn.Module's .to: diffusers' adds a warning per call
        try:
            images = vae.decode(latents.float()).sample
        finally:
            torch.nn.Module.to(vae, torch.float16)
    return (images / 2 + 0.5).clamp(0, 1).float()  # rescaled in the decode's dtype, as diffusers does


def vae_round_trip(components: Components, images: Sequence) -> list:
    """PIL images (all one size, a multiple of the VAE factor) → encode to the posterior mean → decode → PIL."""
    from PIL import Image

    mean, _ = encode_images(components, images_to_pixels(images))
    return [Image.fromarray(a) for a in to_uint8(decode_latents(components, scale_latents(components, mean)))]
