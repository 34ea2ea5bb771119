"""``model.pretrained`` as a single checkpoint file: converted once to a diffusers-layout folder in the cache.

Training reads the model's configs and loads its UNet to train from a folder; a single-file checkpoint
(:mod:`latentdiff.models.single_file`) is written out once, keyed by the file's path, size and modification time,
under ``$LATENTDIFF_CACHE`` (default ``~/.cache/latentdiff``)``/converted/``, and reused by later runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("LATENTDIFF_CACHE", Path.home() / ".cache" / "latentdiff"))


def pretrained_folder(pretrained: str, allow_pickle: bool = False) -> str:
    """``pretrained`` itself unless it is a file; else the folder it was converted to (converting it now if new)."""
    path = Path(pretrained).expanduser()
    if not path.is_file():
        return pretrained
    from ..models import load_components, save_components

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_root() / "converted" / f"{path.stem}-{key}"
    if not (folder / "model_index.json").is_file():
        log.info("model.pretrained '%s' is a single file: converting it once to a diffusers folder in %s", path, folder)
        save_components(load_components(path, device="cpu", allow_pickle=allow_pickle), folder)
    return str(folder)
