"""Image–caption datasets: scan a folder once, load images as 8-bit RGB, crop/flip deterministically.

A dataset is a folder of images (found recursively; .jpg .jpeg .png .webp .bmp, any case; hidden files and
folders are ignored, as Hugging Face imagefolder does). Captions come from ``metadata.jsonl`` or
``metadata.csv`` at the root (imagefolder convention: a ``file_name`` column relative to the root and a
caption column, ``text`` by default; a list of captions means "one at random each time"), or else from a
``.txt`` beside each image. When metadata exists it is the source of truth; unlisted images are ignored.

Public API::

    scan_dataset(root, caption_column="text") -> ScanReport   # every image fully decoded; bad files skipped
    load_image(path) -> Image.Image                            # 8-bit RGB, EXIF orientation applied
    Transform(resolution, crop="center", flip=False)(image, rng=None, flip=None) -> Tensor  # (3, R, R) in [-1, 1]
    ImageCaptionDataset(report, transform, seed=0)[i] -> {"pixel_values", "caption", "index"}
    sample_rng(seed, epoch, index, stream) -> random.Random; pick_caption(item, seed, epoch, index) -> str

Determinism: every random choice for sample ``i`` comes from ``sample_rng(seed, epoch, i, stream)``, a
``random.Random`` seeded from sha256 of those values, so any process reproduces it with no global RNG.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable, Optional, Sequence, Union

import torch
from PIL import Image, UnidentifiedImageError

from ..core.schedule import check_choice
from ..models.pixels import image_to_pixels
from ..pipelines.image_input import RESAMPLE, decode_image, to_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
FILE_COLUMN = "file_name"
CROPS = ("center", "random")
FLIP_PROBABILITY = 0.5
TRANSFORM_VERSION = 1  # bump when the pixels a Transform makes change, to invalidate caches

# Reasons a file is skipped (the keys of ScanReport.skipped).
CORRUPT = "corrupt or truncated image"
TOO_LARGE = "image too large"
EMPTY = "empty file"
UNREADABLE = "unreadable file"
NO_CAPTION = "missing caption"
NOT_UTF8 = "caption is not valid UTF-8"
MISSING = "listed in metadata but missing"
OUTSIDE = "outside the dataset folder"
UNSUPPORTED = "not a supported image type"
BAD_ROW = "bad metadata row"
UNLISTED = "not listed in metadata"


@dataclass(frozen=True)
class Item:
    """One usable image: its path, its caption(s), and sha256 of its bytes (a cache key)."""

    path: Path
    captions: tuple[str, ...]
    digest: str


@dataclass
class ScanReport:
    """The usable items of a dataset folder and, by reason, the relative paths that were skipped."""

    root: Path
    items: list[Item] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


Candidate = Union[Callable[[], tuple], _Skip]  # a caption getter (raises _Skip), or why a metadata row is bad


def _read_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """The image at ``path`` as 8-bit RGB with its EXIF orientation applied."""
    return decode_image(_read_bytes(Path(path)))


def _walk_images(root: Path) -> list[str]:
    """Relative POSIX paths of the image files under ``root``, sorted; hidden names skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(folder, name).relative_to(root).as_posix())
    return found


def _captions(value, from_csv: bool) -> tuple[str, ...]:
    """Metadata caption cell → captions; a list (or, in CSV, a JSON list string) gives several."""
    if from_csv and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
            value = parsed if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed) else value
        except json.JSONDecodeError:
            pass
    values = value if isinstance(value, list) else [value]
    if any(v is not None and not isinstance(v, str) for v in values):
        raise _Skip(BAD_ROW, "caption must be text or a list of texts")
    texts = tuple(v.strip() for v in values if v and v.strip())
    if not texts:
        raise _Skip(NO_CAPTION, "no caption in metadata")
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes survive as lone surrogates (surrogateescape)
            raise _Skip(NOT_UTF8, "in metadata") from None
    return texts


def _metadata_rows(path: Path, caption_column: str) -> list[tuple[str, Candidate]]:
    """(file name, caption getter) per row, or (line, _Skip) for a bad row; ValueError when a column is absent."""
    try:
        text = _read_bytes(path).decode("utf-8-sig", errors="surrogateescape")
    except OSError as error:
        raise ValueError(f"cannot read dataset metadata '{path}': {error.strerror or error}") from None
    rows: list[tuple[str, object]] = []  # (label, dict or _Skip)
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may sit inside a caption
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    row = _Skip(BAD_ROW, f"invalid JSON: {error.msg}")
                rows.append((f"{path.name} line {number}", row if isinstance(row, (dict, _Skip)) else
                             _Skip(BAD_ROW, "not a JSON object")))
        columns = sorted({key for _, row in rows if isinstance(row, dict) for key in row})
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [(f"{path.name} line {reader.line_num}", row) for row in reader]
        columns = list(reader.fieldnames or [])
    for column, option in ((FILE_COLUMN, "it is required"), (caption_column, "set the caption column")):
        if rows and column not in columns:
            found = ", ".join(columns) or "none"
            raise ValueError(f"dataset metadata '{path}' has no '{column}' column (found: {found}); {option}")
    entries = []
    for label, row in rows:
        name = row.get(FILE_COLUMN) if isinstance(row, dict) else None
        if isinstance(name, str) and name:
            entries.append((name, partial(_captions, row.get(caption_column), path.suffix == ".csv")))
        else:
            entries.append((label, row if isinstance(row, _Skip) else _Skip(BAD_ROW, f"no '{FILE_COLUMN}'")))
    return entries


def _txt_caption(root: Path, rel: str) -> tuple[str, ...]:
    txt = (root / rel).with_suffix(".txt")
    txt_rel = txt.relative_to(root).as_posix()
    if not txt.is_file():
        raise _Skip(NO_CAPTION, f"no '{txt_rel}'")
    if not txt.resolve().is_relative_to(root.resolve()):
        raise _Skip(OUTSIDE, f"caption file '{txt_rel}' resolves to '{txt.resolve()}'")
    try:
        text = _read_bytes(txt).decode("utf-8-sig")
    except OSError as error:
        raise _Skip(UNREADABLE, f"caption file '{txt_rel}': {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise _Skip(NOT_UTF8, f"'{txt_rel}' at byte {error.start}") from None
    if not text.strip():
        raise _Skip(NO_CAPTION, f"'{txt_rel}' is empty")
    return (text.strip(),)


def _check(root: Path, name: str, captions: Candidate) -> Item:
    """The Item for one candidate, or _Skip with the first reason it cannot be used."""
    if isinstance(captions, _Skip):  # a metadata row that names no file
        raise captions
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute():
        raise _Skip(OUTSIDE, "absolute path")
    path = root / name
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as error:  # symlink loop
        raise _Skip(MISSING, str(error)) from None
    if not real.is_relative_to(root.resolve()):
        raise _Skip(OUTSIDE, f"resolves to '{real}'")
    if not path.is_file():
        raise _Skip(MISSING, "no such file")
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise _Skip(UNSUPPORTED, f"extension '{path.suffix}' is not one of {', '.join(IMAGE_EXTENSIONS)}")
    captions = captions()
    try:
        data = _read_bytes(path)
    except OSError as error:
        raise _Skip(UNREADABLE, error.strerror or str(error)) from None
    if not data:
        raise _Skip(EMPTY, "0 bytes")
    try:
        decode_image(data)
    except Image.DecompressionBombError as error:
        raise _Skip(TOO_LARGE, str(error)) from None
    except UnidentifiedImageError:
        raise _Skip(CORRUPT, "cannot identify image file") from None
    except Exception as error:  # Pillow raises many types for broken data (OSError, SyntaxError, ValueError, …)
        raise _Skip(CORRUPT, str(error) or type(error).__name__) from None
    return Item(path, captions, hashlib.sha256(data).hexdigest())


def scan_dataset(root: Union[str, os.PathLike], caption_column: str = "text") -> ScanReport:
    """Find, caption and fully decode every image under ``root``; log one warning per skipped file and a summary.

    Raises ValueError when the folder is missing, its metadata lacks a required column, or nothing is usable.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder '{root}' does not exist or is not a folder; pass a folder of images")
    root = root.absolute()  # items stay valid if the working directory changes
    metadata = [root / name for name in METADATA_FILES if (root / name).is_file()]
    if len(metadata) > 1:
        raise ValueError(f"dataset folder '{root}' has both {' and '.join(METADATA_FILES)}; keep only one")
    images = _walk_images(root)
    if metadata:
        candidates = _metadata_rows(metadata[0], caption_column)
    else:
        candidates = [(rel, partial(_txt_caption, root, rel)) for rel in images]
    report = ScanReport(root)
    for name, captions in candidates:
        try:
            report.items.append(_check(root, name, captions))
        except _Skip as skip:
            report.skipped.setdefault(skip.reason, []).append(name)
            log.warning("skipped '%s': %s%s", name, skip.reason, f" ({skip.detail})" if skip.detail else "")
    if metadata:
        listed = {os.path.normpath(name) for name, _ in candidates}
        unlisted = [rel for rel in images if os.path.normpath(rel) not in listed]
        if unlisted:
            report.skipped[UNLISTED] = unlisted
            log.warning("ignored %d image(s) under '%s' not listed in %s (first: '%s')",
                        len(unlisted), root, metadata[0].name, unlisted[0])
    counts = ", ".join(f"{reason}: {len(names)}" for reason, names in report.skipped.items())
    skipped = sum(len(names) for names in report.skipped.values())
    log.log(logging.WARNING if skipped else logging.INFO, "dataset '%s': %d usable image(s), %d skipped%s",
            root, len(report.items), skipped, f" ({counts})" if counts else "")
    if not report.items:
        source = f"{metadata[0].name} ('{FILE_COLUMN}' and '{caption_column}' columns)" if metadata else \
            "a .txt caption beside each image"
        raise ValueError(f"no usable images in dataset folder '{root}': expected {'/'.join(IMAGE_EXTENSIONS)} "
                         f"images with captions from {source}; skipped: {counts or 'no images found'}")
    return report


@dataclass(frozen=True)
class Transform:
    """Resize the shorter side to ``resolution`` (Lanczos), crop a square (center or random), maybe flip."""

    resolution: int
    crop: str = "center"
    flip: bool = False

    def __post_init__(self):
        if not isinstance(self.resolution, int) or self.resolution < 1:
            raise ValueError(f"resolution={self.resolution!r} must be a positive integer")
        check_choice("crop", self.crop, CROPS)

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) after scaling the shorter side to exactly ``resolution``."""
        (w, h), r = size, self.resolution
        return (r, max(r, round(h * r / w))) if w <= h else (max(r, round(w * r / h)), r)

    def choose(self, size: tuple[int, int], rng: Optional[random.Random] = None,
               flip: Optional[bool] = None) -> tuple[int, int, bool]:
        """(left, top, flipped) for an image of ``size``: the only random part; crop offsets drawn before flip."""
        w, h = self.resized_size(size)
        r = self.resolution
        if rng is None and (self.crop == "random" or (self.flip and flip is None)):
            raise ValueError(f"Transform(crop={self.crop!r}, flip={self.flip}) needs an rng (random.Random)")
        if self.crop == "random":
            left, top = rng.randint(0, w - r), rng.randint(0, h - r)
        else:
            left, top = (w - r) // 2, (h - r) // 2
        if flip is None:
            flip = self.flip and rng.random() < FLIP_PROBABILITY
        return left, top, bool(flip)

    def apply(self, image: Image.Image, left: int, top: int, flipped: bool) -> torch.Tensor:
        """Resize, crop at (left, top), flip if asked; (3, R, R) float32 in [-1, 1]."""
        image = image if image.mode == "RGB" else to_rgb(image)
        size = self.resized_size(image.size)
        if size != image.size:
            image = image.resize(size, RESAMPLE)
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image_to_pixels(image)  # (3, R, R)

    def __call__(self, image: Image.Image, rng: Optional[random.Random] = None,
                 flip: Optional[bool] = None) -> torch.Tensor:
        """(3, R, R) in [-1, 1]; ``flip`` True/False overrides the random flip decision."""
        return self.apply(image, *self.choose(image.size, rng, flip))

    def key(self) -> str:
        """Identifies the deterministic part (not crop offsets or flip: add those per cache entry)."""
        return f"v{TRANSFORM_VERSION}-{self.resolution}px-{self.crop}-{RESAMPLE.name.lower()}"


def sample_rng(seed: int, epoch: int, index: int, stream: str) -> random.Random:
    """A random.Random depending only on (seed, epoch, index, stream): the same in every process and run."""
    material = f"{seed}/{epoch}/{index}/{stream}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))


def pick_caption(item: Item, seed: int, epoch: int, index: int) -> str:
    """The caption of sample ``index`` in ``epoch``: one of ``item.captions``, chosen reproducibly."""
    if len(item.captions) == 1:
        return item.captions[0]
    return sample_rng(seed, epoch, index, "caption").choice(item.captions)


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Items of a scan, transformed; crop, flip and caption depend only on (seed, epoch, index)."""

    def __init__(self, report: Union[ScanReport, Sequence[Item]], transform: Transform, seed: int = 0,
                 epoch: int = 0):
        self.items = list(report.items if isinstance(report, ScanReport) else report)
        self.transform, self.seed, self.epoch = transform, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random draws __getitem__ makes (call before creating the DataLoader iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        index = range(len(self.items))[index]  # normalizes negatives, raises IndexError
        item = self.items[index]
        rng = sample_rng(self.seed, self.epoch, index, "transform")
        return {
            "pixel_values": self.transform(load_image(item.path), rng),  # (3, R, R)
            "caption": pick_caption(item, self.seed, self.epoch, index),
            "index": index,
        }
