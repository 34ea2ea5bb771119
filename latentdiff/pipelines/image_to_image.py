"""Image → image (img2img): encode the image, noise it to the level the strength selects, sample from there.

Same seed, same pixels as diffusers' ``StableDiffusionImg2ImgPipeline`` with CPU generators: the image's latents
are a sample of q(z | x) drawn with image i's generator, then its noise; the sampler runs the last
⌊steps·strength⌋ of its steps (:func:`latentdiff.core.samplers.plan`).
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

import torch
from PIL import Image

from ..core.sampling import Generators, randn
from ..models import Components, encode_images, scale_latents
from ..models.pixels import image_to_pixels
from .image_input import fit_image, read_image
from .settings import GenerationConfig
from .text_to_image import Generated, TextToImage

ImageInput = Union[str, os.PathLike, Image.Image]


def prepare_image(image: ImageInput, components: Components, height: Optional[int] = None,
                  width: Optional[int] = None) -> tuple[Image.Image, list[str]]:
    """(RGB image, notes) at (height, width), by default the image's own size rounded down to a multiple of the VAE
    factor (as diffusers' image processor does); other sizes are covered and center-cropped. Any file or mode."""
    notes = []
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            notes.append(f"converted {image.mode} to RGB")
        image = image.convert("RGB")
    else:
        image, notes = read_image(image)
    factor = components.vae_scale_factor
    size = (height or image.height // factor * factor, width or image.width // factor * factor)
    if min(size) < factor:
        raise ValueError(f"image of {image.width}×{image.height} is smaller than the VAE factor {factor}; "
                         "pass a larger image or height/width")
    fitted, steps = fit_image(image, size, multiple_of=factor)
    return fitted, notes + steps


def sample_latents(components: Components, pixels: torch.Tensor, generators: Generators, count: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """(count, C, h, w) diffusion latents of ``pixels`` (1 or count, 3, H, W) in [-1, 1]: a sample of q(z | x) per
    generator, scaled (diffusers' ``retrieve_latents(vae.encode(image), generator)``, sample_mode 'sample')."""
    mean, std = encode_images(components, pixels)  # (1 or count, C, h, w) float32 each
    mean, std = mean.to(dtype), std.to(dtype)
    draws = randn((count, *mean.shape[1:]), generators, dtype, components.device)
    return scale_latents(components, mean + std * draws)


def image_batch(pipe: TextToImage, prompt, image: ImageInput, settings: Optional[GenerationConfig], overrides: dict):
    """(the input image sized, notes, (settings, prompts, seeds)): at the image's own size unless height/width are
    given (in ``overrides``, or ``settings``)."""
    if settings is None:
        picture, said = prepare_image(image, pipe.components, overrides.get("height"), overrides.get("width"))
        overrides = {**overrides, "height": picture.height, "width": picture.width}
    else:
        picture, said = prepare_image(image, pipe.components, settings.height, settings.width)
    return picture, said, pipe.batch(prompt, settings, overrides)


def img2img(pipe: TextToImage, prompt: Union[str, Sequence[str]], image: ImageInput, *, strength: float = 0.75,
            settings: Optional[GenerationConfig] = None, progress: bool = False, callback=None,
            notes: Optional[list] = None, **overrides) -> list[Generated]:
    """Images for each prompt × num_images from ``image`` reworked at ``strength`` (0: unchanged, 1: all steps,
    the image only through its noised latents); image i uses seed + i. ``notes`` collects what was done to the
    input image (resized, converted)."""
    c = pipe.components
    picture, said, (cfg, prompts, seeds) = image_batch(pipe, prompt, image, settings, overrides)
    if notes is not None:
        notes.extend(said)
    pixels = image_to_pixels(picture)[None]  # (1, 3, H, W)
    latents = rework(pipe, prompts, seeds, cfg, strength,
                     lambda generators, dtype: sample_latents(c, pixels, generators, len(prompts), dtype),
                     progress=progress, callback=callback)
    return pipe.decode(latents, prompts, seeds, cfg, strength=strength)


def rework(pipe: TextToImage, prompts: Sequence[str], seeds: Sequence[int], cfg: GenerationConfig, strength: float,
           encode: Callable[[list, torch.dtype], torch.Tensor], *, progress: bool = False,
           callback=None) -> torch.Tensor:
    """Latents (B, C, h, w) sampled from ``encode(generators, dtype)`` (the images' latents, drawn first with each
    image's generator) noised to ``strength``'s level with the same generators."""
    c = pipe.components
    pipe.require_plain_unet()
    plan = pipe.plan(cfg, strength)
    generators = [torch.Generator().manual_seed(s) for s in seeds]  # per image: its latent sample, then its noise
    denoiser = pipe.denoiser(prompts, cfg)
    dtype = denoiser.cond.dtype
    with torch.inference_mode():
        x0 = encode(generators, dtype)  # (B, C, h, w)
        noise = randn(x0.shape, generators, dtype, c.device)
        return plan(denoiser, plan.noised(x0, noise), c.schedule, generator=generators, callback=callback,
                    disable_progress=not progress)
