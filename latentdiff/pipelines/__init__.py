"""Pipelines: glue from prompts (and images) to images over the core samplers — no diffusion math here.

    pipeline.py       Pipeline: every pipeline below on one loaded model
    text_to_image.py  TextToImage: encode prompts, seeded latents, sample with guidance, decode
    image_to_image.py img2img: the image encoded, noised to the strength's level, sampled from there
    inpaint.py        inpainting and outpainting (4-channel models by latent blending, 9-channel inpainting UNets)
    hires.py          hires fix: generate, upscale, img2img
    settings.py       GenerationConfig: every generation default, the model's overrides, validation
    prompts.py        prompt tokenization and text-encoder embeddings (shared with training and editing)
    image_input.py    images in: any file, mode and size to sized RGB, encoded to latents
    images.py         images out: PNGs with their parameters, grids, atomic writes, output paths
"""

from .pipeline import Pipeline
from .settings import GenerationConfig
from .text_to_image import Generated, TextToImage

__all__ = ["GenerationConfig", "Generated", "Pipeline", "TextToImage"]
