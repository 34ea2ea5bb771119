"""Inpainting: repaint where the mask is white, keep the rest; any model, and 9-channel inpainting models.

Same seed, same pixels as diffusers' ``StableDiffusionInpaintPipeline`` (with ``mask_blur=0`` and
``composite=False``): the mask is binarized at 0.5 and the masked image is the image with the repainted region
black. With an inpainting UNet (9 input channels) the latents, the mask at latent size and the masked image's
latents go in together at every step. With an ordinary UNet (4) the known region is put back after every step,
noised to the next step's level (latent blending). Per image i its generator draws the image's latent sample, its
noise, then the masked image's latent sample, so that every image can be made again alone.

Afterwards (``composite``) the output is the input outside the mask, the generated pixels fading in across the
mask's edge (blurred inward by ``mask_blur`` pixels).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from ..core.sampling import randn
from ..models.pixels import MAX_LEVEL, image_to_pixels
from .image_input import RESAMPLE, read_image, to_rgb
from .image_to_image import ImageInput, image_batch, sample_latents
from .settings import GenerationConfig
from .text_to_image import Generated, TextToImage, latent_channels

MASK_BLUR = 4  # pixels, A1111's default


def prepare_mask(mask: ImageInput, size: tuple[int, int], blur: float = 0) -> tuple[Image.Image, list[str]]:
    """The mask as 8-bit grayscale ("L") of ``size`` (width, height), white = repaint; any file or mode
    (transparency on white), resized to the image with a note. ``blur`` is only checked here (see
    :func:`mask_tensors`)."""
    check_blur(blur)
    mask, notes = (to_rgb(mask), []) if isinstance(mask, Image.Image) else read_image(mask)
    mask = mask.convert("L")
    if mask.size != tuple(size):
        notes.append(f"mask resized {mask.width}×{mask.height} → {size[0]}×{size[1]} to fit the image")
        mask = mask.resize(tuple(size), RESAMPLE)
    return mask, notes


def check_blur(blur: float) -> None:
    if not blur >= 0:
        raise ValueError(f"mask_blur={blur!r} must be >= 0 pixels")


def mask_tensors(mask: Image.Image, blur: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(binary, soft), each (1, 1, H, W) float32 in [0, 1]. ``binary``: the mask binarized at 0.5, what the model
    sees (diffusers' mask processor). ``soft``: the composite's weight of the generated pixels, the mask's gray
    levels times their Gaussian blur by ``blur`` pixels, so that the seam fades inside the mask and everything
    outside it stays the input."""
    gray = np.array(mask, dtype=np.float32) / MAX_LEVEL
    blurred = np.array(mask.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32) / MAX_LEVEL if blur else gray
    return torch.from_numpy(gray >= 0.5).float()[None, None], torch.from_numpy(gray * blurred)[None, None]


def extend_canvas(image: Image.Image, extend: dict, multiple_of: int = 1) -> tuple[Image.Image, Image.Image, list]:
    """Outpainting's input: ``image`` padded by ``extend`` pixels per side (left/top/right/bottom), each rounded up
    to a multiple of ``multiple_of`` (the VAE factor) with a note, the new border filled by repeating the edge
    pixels; and the mask, white on the new border. Returns (canvas, mask, notes)."""
    notes, pads = [], {}
    for side in ("left", "top", "right", "bottom"):
        px = int(extend.get(side, 0))
        if px < 0:
            raise ValueError(f"extend {side}={px} must be >= 0 pixels")
        pads[side] = -(-px // multiple_of) * multiple_of
        if pads[side] != px:
            notes.append(f"{side}={px} rounded up to {pads[side]}, a multiple of the VAE factor {multiple_of}")
    array = np.asarray(image.convert("RGB"))
    (top, bottom), (left, right) = (pads["top"], pads["bottom"]), (pads["left"], pads["right"])
    canvas = np.pad(array, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.full(canvas.shape[:2], MAX_LEVEL, dtype=np.uint8)
    mask[top : top + array.shape[0], left : left + array.shape[1]] = 0
    notes.append(f"canvas {image.width}×{image.height} → {canvas.shape[1]}×{canvas.shape[0]}, the new border painted")
    return Image.fromarray(canvas), Image.fromarray(mask), notes


class MaskedUNetModel:
    """An inpainting UNet as ``model(x, t, cond)``: its input is [x, mask, masked-image latents] along channels,
    the extra channels repeated over the classifier-free-guidance batch."""

    def __init__(self, unet, extra: torch.Tensor):
        self.unet, self.extra = unet, extra  # (B, 1 + C, h, w)

    def __call__(self, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        extra = self.extra.repeat(x.shape[0] // self.extra.shape[0], 1, 1, 1)
        return self.unet(torch.cat([x, extra.to(x.dtype)], dim=1), t, encoder_hidden_states=cond, return_dict=False)[0]


def inpaint(pipe: TextToImage, prompt: Union[str, Sequence[str]], image: ImageInput, mask: ImageInput, *,
            strength: float = 1.0, mask_blur: float = MASK_BLUR, composite: bool = True,
            settings: Optional[GenerationConfig] = None, progress: bool = False, callback=None,
            notes: Optional[list] = None, **overrides) -> list[Generated]:
    """Images for each prompt × num_images: ``image`` repainted where ``mask`` is white (``strength`` < 1 starts
    from the image noised, as img2img); image i uses seed + i."""
    c = pipe.components
    picture, said, (cfg, prompts, seeds) = image_batch(pipe, prompt, image, settings, overrides)
    channels = latent_channels(c)
    unet_channels = c.unet.config.in_channels
    if unet_channels not in (channels, 2 * channels + 1):
        raise ValueError(f"the UNet takes {unet_channels} input channels; inpainting needs {channels} (any model) or "
                         f"{2 * channels + 1} (an inpainting model)")
    full = strength == 1.0  # pure noise, as text to image (diffusers' is_strength_max), else the image noised
    plan = pipe.plan(cfg, None if full else strength)
    gray, mask_said = prepare_mask(mask, picture.size, mask_blur)
    if notes is not None:
        notes.extend(said + mask_said)
    binary, soft = mask_tensors(gray, mask_blur)  # (1, 1, H, W)
    pixels = image_to_pixels(picture)[None]  # (1, 3, H, W) in [-1, 1]

    generators = [torch.Generator().manual_seed(s) for s in seeds]
    B, h, w = len(prompts), picture.height // c.vae_scale_factor, picture.width // c.vae_scale_factor
    with torch.inference_mode():
        cond_dtype = c.text_encoder.dtype
        blending = unet_channels == channels  # an ordinary UNet: the known region is put back after every step
        x0 = None  # the image's latents, drawn first where they are used (diffusers' order)
        if blending or not full:
            x0 = sample_latents(c, pixels, generators, B, cond_dtype)
        noise = randn((B, channels, h, w), generators, cond_dtype, c.device)
        latents = noise if full else plan.noised(x0, noise)
        masked_latents = sample_latents(c, pixels * (binary < 0.5), generators, B, cond_dtype)
        latent_mask = F.interpolate(binary, size=(h, w)).to(c.device, cond_dtype)  # nearest, as diffusers
        model, after_step = None, None
        if not blending:
            model = MaskedUNetModel(c.unet, torch.cat([latent_mask.repeat(B, 1, 1, 1), masked_latents], dim=1))
        else:
            def after_step(i, x):  # the known region, re-noised to the next step's level (clean after the last)
                known = plan.noised(x0, noise, i + 1) if i + 1 < len(plan.timesteps) else x0
                return torch.lerp(known, x, latent_mask)  # known + m (x − known)
        denoiser = pipe.denoiser(prompts, cfg, model)
        latents = plan(denoiser, latents, c.schedule, generator=generators, callback=callback, after_step=after_step,
                       disable_progress=not progress)
    out = pipe.decode(latents, prompts, seeds, cfg, strength=strength, mask_blur=mask_blur, composite=composite)
    if composite:
        weights = soft[0, 0].numpy()[..., None]  # (H, W, 1): 1 = generated, 0 = the input
        original = np.asarray(picture, dtype=np.float64)
        for result in out:
            blended = weights * np.asarray(result.image, dtype=np.float64) + (1 - weights) * original
            result.image = Image.fromarray(np.rint(blended).astype(np.uint8))
    return out

