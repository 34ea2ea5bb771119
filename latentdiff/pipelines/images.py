"""Images out and their parameters back in: PNGs with generation parameters, grids, atomic writes, output paths."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .parameters import format_parameters

EXIF_IFD, USER_COMMENT = 0x8769, 0x9286  # where A1111 puts the parameters text in a JPEG or WebP


def save_png(image: Image.Image, path: Path, params: dict | None = None) -> Path:
    """Write a PNG atomically (temp name, then rename) with ``params`` in its text chunks: ``parameters`` in
    AUTOMATIC1111's format (:func:`~.parameters.format_parameters`) and ``latentdiff``, the params as JSON."""
    info = PngImagePlugin.PngInfo()
    if params:
        info.add_text("parameters", format_parameters(params))
        info.add_text("latentdiff", json.dumps(params, sort_keys=True))
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_params(path: Path) -> dict:
    """The generation parameters stored in a PNG written by :func:`save_png`."""
    with Image.open(path) as image:
        return json.loads(image.text["latentdiff"])


def read_png_parameters(path: str | os.PathLike) -> tuple[dict | None, str | None]:
    """(our JSON params or None, the A1111 ``parameters`` text or None) of an image: a PNG's text chunks, or the
    EXIF UserComment A1111 writes into a JPEG or WebP. A one-line ValueError naming the file when it is not an
    image or has neither."""
    try:
        with Image.open(path) as image:
            chunks = dict(getattr(image, "text", None) or {})  # PNG tEXt/iTXt/zTXt, also those after the pixels
            if "parameters" not in chunks and (comment := _user_comment(image)):
                chunks["parameters"] = comment
    except FileNotFoundError:
        raise ValueError(f"'{path}' does not exist") from None
    except UnidentifiedImageError:
        raise ValueError(f"'{path}' is not a PNG/image: no image format recognises its contents") from None
    except OSError as error:
        raise ValueError(f"cannot read '{path}': {error.strerror or error}") from None
    text, ours = chunks.get("parameters"), chunks.get("latentdiff")
    if text is None and ours is None:
        raise ValueError(f"'{path}' has no generation parameters (no 'parameters' or 'latentdiff' text chunk)")
    if ours is not None:
        try:
            ours = json.loads(ours)
        except json.JSONDecodeError as error:
            raise ValueError(f"'{path}' has a 'latentdiff' text chunk that is not JSON: {error}") from None
    return ours, text


def _user_comment(image: Image.Image) -> str | None:
    """The EXIF UserComment text (8 bytes naming its encoding, then the text: A1111 writes UNICODE, UTF-16 BE)."""
    raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if isinstance(raw, str):
        return raw or None
    if not raw:
        return None
    code, body = bytes(raw[:8]), bytes(raw[8:])
    if code == b"UNICODE\0":
        text = body.decode("utf-16-le" if body[:1] != b"\0" and body[1:2] == b"\0" else "utf-16-be", "replace")
    else:  # ASCII, or an undefined code: UTF-8 is what other writers use
        text = (body if code in (b"ASCII\0\0\0", b"\0" * 8) else bytes(raw)).decode("utf-8", "replace")
    return text.strip("\0") or None


def grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile images (all the same size) row by row into one image."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    out = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        out.paste(image, ((i % columns) * w, (i // columns) * h))
    return out


def check_writable(path: Path) -> None:
    """Raise a ValueError naming ``path`` unless a file can be created in its folder."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".latentdiff-write-test-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as error:
        raise ValueError(f"cannot write output '{path}': {error.strerror or error}; choose a writable --output") from None
    if Path(path).is_dir():
        raise ValueError(f"output '{path}' is a folder; pass a file name ending in .png or a folder ending in /")


def output_paths(output: str | os.PathLike, count: int) -> list[Path]:
    """One path per image: ``out.png`` for one image; ``out-000.png``, … for several (plus a grid)."""
    output = str(output)
    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        base = Path(output) / "image.png"
    else:
        base = Path(output)
    if base.suffix.lower() != ".png":
        raise ValueError(f"output '{output}' must end in .png (or be a folder)")
    if count == 1:
        return [base]
    return [base.with_name(f"{base.stem}-{i:03d}.png") for i in range(count)]
