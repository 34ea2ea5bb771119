"""Shapes-world datasets: examples drawn from (seed, index), written as a Hugging Face imagefolder.

Example ``i`` of seed ``s`` is drawn from its own generator ``default_rng([s, i])``, so any example can
be regenerated alone and a dataset of n examples is a prefix of one of n + 1.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .captions import make_caption
from .render import render
from .world import ATTRIBUTES, SPLITS, sample_attributes

logger = logging.getLogger(__name__)

METADATA = "metadata.jsonl"  # the file name the imagefolder loader looks for
FILE_DIGITS = 6  # images are named 000000.png, 000001.png, …
_OUR_FILES = re.compile(r"^\d+\.png$")


def make_example(seed: int, index: int, split: str = "train", color: str | None = None) -> tuple[Image.Image, dict]:
    """(image, row): example ``index`` of ``seed``; row = {"text", "shape", …, "background", "stated", "split"}.

    ``color`` redraws the same example with another object color and nothing else changed (same shape,
    placement and caption template): the ground truth of a color word swap.
    """
    rng = np.random.default_rng([seed, index])
    attrs = sample_attributes(rng, split)
    if color is not None:
        attrs = {**attrs, "color": color}
    image = render(attrs, rng)
    caption, stated = make_caption(attrs, rng)
    return image, {"text": caption, **{k: attrs[k] for k in ATTRIBUTES}, "stated": stated, "split": split}


def examples(n: int, seed: int, split: str = "train") -> Iterator[tuple[Image.Image, dict]]:
    """The first ``n`` examples of ``seed`` in memory, as :func:`make_example` draws them."""
    _check(n, seed, split)
    for i in range(n):
        yield make_example(seed, i, split)


def _check(n: int, seed: int, split: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive number of images")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not supported; choose one of {', '.join(map(repr, SPLITS))}")


def render_dataset(
    out_dir: str | os.PathLike,
    n: int,
    seed: int,
    split: str = "train",
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``n`` PNGs and ``metadata.jsonl`` (imagefolder format) into ``out_dir``; returns the metadata path.

    Each metadata row is ``{"file_name", "text", "shape", "color", "size", "position", "background",
    "stated", "split"}``. The metadata is written under a temporary name and renamed last, so a folder
    with a ``metadata.jsonl`` is complete. A non-empty ``out_dir`` is refused unless ``overwrite``,
    which first removes the previous ``metadata.jsonl`` and numbered PNGs (and nothing else).
    """
    _check(n, seed, split)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out '{out}' is a file; give a folder for the dataset")
    out.mkdir(parents=True, exist_ok=True)
    old = [p for p in out.iterdir() if p.name == METADATA or _OUR_FILES.match(p.name)]
    if any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out '{out}' is not empty; choose a new folder or pass --overwrite")
    for path in old:
        path.unlink()
    if old:
        logger.info("removed %d files of a previous dataset in %s", len(old), out)

    digits = max(FILE_DIGITS, len(str(n - 1)))
    tmp = out / f".{METADATA}.tmp"
    with open(tmp, "w", encoding="utf-8") as meta:
        for i, (image, row) in enumerate(tqdm(examples(n, seed, split), total=n, disable=not progress,
                                              desc=f"shapes {split}")):
            name = f"{i:0{digits}d}.png"
            image.save(out / name, format="PNG")
            meta.write(json.dumps({"file_name": name, **row}) + "\n")
    os.replace(tmp, out / METADATA)
    logger.info("wrote %d %s images and %s to %s", n, split, METADATA, out)
    return out / METADATA


def read_metadata(out_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``out_dir/metadata.jsonl``, in file order."""
    with open(Path(out_dir) / METADATA, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
