"""Pipelines: glue from prompts (and images) to images over the core samplers — no diffusion math here.

    text_to_image.py  Pipeline: encode prompts, seeded latents, sample with guidance, decode
    settings.py       GenerationConfig: every generation default, the model's overrides, validation
    prompts.py        prompt tokenization and text-encoder embeddings (shared with training and editing)
    image_input.py    images in: any file, mode and size to sized RGB, encoded to latents
    images.py         images out: PNGs with their parameters, grids, atomic writes, output paths
"""

from .settings import GenerationConfig
from .text_to_image import Generated, Pipeline

__all__ = ["GenerationConfig", "Generated", "Pipeline"]
