"""The one Pipeline users load: text to image, image to image, inpainting (and outpainting), hires fix."""

from __future__ import annotations

from typing import Sequence, Union

from .hires import hires_fix
from .image_to_image import ImageInput, img2img
from .inpaint import inpaint
from .text_to_image import Generated, TextToImage


class Pipeline(TextToImage):
    """``Pipeline.from_pretrained(model)`` → ``generate`` / ``__call__`` (text to image), ``img2img``, ``inpaint``,
    ``hires_fix``; one loaded model for all of them. Same seed, same pixels as diffusers' pipelines."""

    def img2img(self, prompt: Union[str, Sequence[str]], image: ImageInput, *, strength: float = 0.75,
                **kwargs) -> list[Generated]:
        """Rework ``image`` at ``strength``: :func:`latentdiff.pipelines.image_to_image.img2img`."""
        return img2img(self, prompt, image, strength=strength, **kwargs)

    def inpaint(self, prompt: Union[str, Sequence[str]], image: ImageInput, mask: ImageInput,
                **kwargs) -> list[Generated]:
        """Repaint where ``mask`` is white: :func:`latentdiff.pipelines.inpaint.inpaint`."""
        return inpaint(self, prompt, image, mask, **kwargs)

    def hires_fix(self, prompt: Union[str, Sequence[str]], **kwargs) -> list[Generated]:
        """Generate small, upscale, rework: :func:`latentdiff.pipelines.hires.hires_fix`."""
        return hires_fix(self, prompt, **kwargs)
