"""Images over HTTP: base64 in (raw, or a ``data:`` URL) and out (raw base64 PNG, no prefix, as A1111 sends),
PNG bytes with the parameters chunk, and the text chunks of an uploaded image (png-info)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from ..pipelines.image_input import DECODERS, to_rgb
from ..pipelines.images import read_png_parameters
from ..pipelines.parameters import format_parameters

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def decode_base64(text, name: str) -> bytes:
    """The bytes of a base64 string, or of a ``data:...;base64,`` URL; a ValueError naming ``name`` otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name} is empty; send the image as base64 (a PNG, JPEG, WebP or BMP file's bytes)")
    text = text.strip()
    if text.startswith(("http://", "https://")):
        raise ValueError(f"{name} is a URL; this server fetches nothing: send the image itself, base64-encoded")
    if text.startswith("data:"):
        head, comma, text = text.partition(",")
        if not comma or not head.endswith(";base64"):
            raise ValueError(f"{name} is a data URL without ';base64,'; send data:image/png;base64,... or plain base64")
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not valid base64 (A-Z, a-z, 0-9, +, /, = padding); encode the file's bytes "
                         "with base64") from None


def open_image(data: bytes, name: str, max_side: int) -> Image.Image:
    """The image in ``data``, fully decoded (its text chunks kept); a ValueError naming ``name`` when it is no
    image or either side is over ``max_side`` pixels (checked from the header, before decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=DECODERS)
            if max(image.size) > max_side:
                raise ValueError(f"{name} is {image.width}×{image.height} pixels; this server takes images of at "
                                 f"most {max_side} pixels a side (max_size): send a smaller one")
            image.load()
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image: its bytes are no PNG, JPEG, WebP or BMP") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{name} declares more pixels than it may (a decompression bomb?); send a smaller image") \
            from None
    except (OSError, SyntaxError, EOFError) as error:
        raise ValueError(f"{name} is a damaged or truncated image ({error}); send the whole file") from None
    return image


def read_image(text, name: str, max_side: int) -> Image.Image:
    """A base64 image (any mode) as 8-bit RGB, EXIF orientation applied, transparency on white."""
    return to_rgb(ImageOps.exif_transpose(open_image(decode_base64(text, name), name, max_side)))


def read_mask(text, name: str, max_side: int) -> tuple[Image.Image, list[str]]:
    """A base64 mask as 8-bit grayscale, white = repaint. As A1111 reads one: an image whose alpha varies is masked
    by its alpha (opaque = repaint); otherwise by its gray levels."""
    image = ImageOps.exif_transpose(open_image(decode_base64(text, name), name, max_side))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha, [f"{name}: its alpha channel is the mask (opaque = repaint), as A1111 reads it"]
    return to_rgb(image).convert("L"), []


def png_bytes(image: Image.Image, params: Optional[dict] = None) -> bytes:
    """The PNG file of ``image`` with the chunks :func:`latentdiff.pipelines.images.save_png` writes: ``parameters``
    (A1111's text) and ``latentdiff`` (the params as JSON)."""
    info = PngImagePlugin.PngInfo()
    if params:
        info.add_text("parameters", format_parameters(params))
        info.add_text("latentdiff", json.dumps(params, sort_keys=True))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def array_png_base64(array: np.ndarray, size: Optional[tuple[int, int]] = None) -> str:
    """A small (h, w, 3) uint8 array as base64 PNG, resized to ``size`` (width, height) if given."""
    image = Image.fromarray(array)
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return to_base64(png_bytes(image))


def text_chunks(data: bytes, name: str, max_side: int) -> tuple[str, dict]:
    """(the A1111 ``parameters`` text or "", every other text item) of an image: PNG text chunks, or the EXIF
    UserComment A1111 writes into a JPEG or WebP."""
    image = open_image(data, name, max_side)
    items = {k: v for k, v in (getattr(image, "text", None) or {}).items() if isinstance(v, str)}
    text = items.pop("parameters", None)
    if text is None:
        try:
            _, text = read_png_parameters(io.BytesIO(data))  # the EXIF UserComment of a JPEG or WebP
        except ValueError:
            text = None
    return text or "", items
