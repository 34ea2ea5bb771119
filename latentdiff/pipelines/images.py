"""Writing images: PNGs with their generation parameters, grids, atomic writes, output paths."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

from PIL import Image, PngImagePlugin


def a1111_parameters(params: dict) -> str:
    """The 'parameters' text chunk in the format most image tools read (AUTOMATIC1111 style)."""
    lines = [params.get("prompt", "")]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    keys = [("Steps", "steps"), ("Sampler", "sampler"), ("CFG scale", "guidance"), ("Seed", "seed"),
            ("Eta", "eta"), ("Model", "model"), ("Denoising strength", "strength"), ("Mask blur", "mask_blur"),
            ("Hires upscale", "hires_scale"), ("Hires steps", "hires_steps"), ("Hires upscaler", "hires_upscaler")]
    fields = [f"{label}: {params[k]}" for label, k in keys if params.get(k) is not None]
    if "width" in params and "height" in params:
        fields.insert(4, f"Size: {params['width']}x{params['height']}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def save_png(image: Image.Image, path: Path, params: dict | None = None) -> Path:
    """Write a PNG atomically (temp name, then rename) with ``params`` in its text chunks."""
    info = PngImagePlugin.PngInfo()
    if params:
        info.add_text("parameters", a1111_parameters(params))
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
