"""The models a client may switch to: the model folders and single-file checkpoints (``.safetensors``) directly
inside ``models_dir``, plus the model the server started with. Clients name a model by A1111's title (``name [hash]``), its name or its hash — never by a path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..pipelines.parameters import model_hash


class ModelNotFound(ValueError):
    """The name is well formed but names no model of the catalog (HTTP 404)."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    hash: str

    @property
    def title(self) -> str:
        """A1111's checkpoint title: 'name [short hash]'."""
        return f"{self.name} [{self.hash}]" if self.hash else self.name

    def item(self) -> dict:
        """A1111's /sdapi/v1/sd-models item."""
        return {"title": self.title, "model_name": self.name, "hash": self.hash or None, "sha256": None,
                "filename": str(self.path), "config": None}


class Catalog:
    """Model folders (a ``model_index.json`` inside) and ``.safetensors`` checkpoints of ``models_dir`` whose real
    path stays inside it, and ``default``; hashed once each (A1111's short hash: of a file, or of a folder's UNet
    weights file)."""

    def __init__(self, default: Path, models_dir: Optional[Path] = None):
        self.default = Path(default).resolve()
        self.models_dir = Path(models_dir).resolve() if models_dir is not None else None
        self._hashes: dict[Path, str] = {}

    def entries(self) -> list[ModelEntry]:
        folders = [self.default]
        if self.models_dir is not None:
            for child in sorted(self.models_dir.iterdir()):
                real = child.resolve()
                model = (real / "model_index.json").is_file() or (real.is_file() and real.suffix == ".safetensors")
                if model and real.is_relative_to(self.models_dir) and real != self.default:
                    folders.append(real)
        return [self.entry_of(path) for path in folders]

    def find(self, name) -> ModelEntry:
        """The entry a client names; ValueError (HTTP 400) for what is no model name (a path, '..'),
        :class:`ModelNotFound` (HTTP 404) for a name of no model here."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError("sd_model_checkpoint must be a model's title or name; see GET /sdapi/v1/sd-models")
        name = name.strip()
        if ".." in name or "/" in name or "\\" in name or name.startswith("~") or "\0" in name:
            raise ValueError(f"sd_model_checkpoint={name!r} is a path, not a model name; name one of GET "
                             "/sdapi/v1/sd-models' titles")
        bare = name.removesuffix(".safetensors")
        entries = self.entries()
        for entry in entries:
            if bare in (entry.title, entry.name) or (entry.hash and bare == entry.hash):
                return entry
        raise ModelNotFound(f"model {name!r} not found; choose one of: {', '.join(e.title for e in entries)}")

    def entry_of(self, path: Path) -> ModelEntry:
        """A folder is named by its name, a checkpoint file by its stem (A1111's model_name)."""
        path = Path(path).resolve()
        return ModelEntry(path.stem if path.is_file() else path.name, path, self._hash(path))

    def _hash(self, path: Path) -> str:
        if path not in self._hashes:
            try:
                self._hashes[path] = model_hash(path)
            except ValueError:
                self._hashes[path] = ""
        return self._hashes[path]
