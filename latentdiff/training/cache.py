"""An on-disk cache of encoder outputs, keyed by content, in self-describing safetensors shards.

Each shard ``<kind>-<id>.safetensors`` holds tensors named ``<row>.<field>`` and lists its keys in the
file's metadata, so the index is rebuilt by reading shard headers: no separate index to go stale.
Shards are written under a temporary name and renamed when complete, so a killed run leaves either a
whole shard or none. Any number of runs and processes may add shards side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def content_key(*parts: object) -> str:
    """A stable key from the parts that determine an entry (file digest, transform, model identity, …)."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


# Config entries that record where and by which library version a model was loaded, not what it computes.
_PROVENANCE = ("_name_or_path", "_diffusers_version", "transformers_version", "_commit_hash")


def module_identity(module: torch.nn.Module) -> str:
    """sha256 over a module's config and weights: changes whenever the encoder changes, and only then.

    The same weights loaded from another folder (or saved by another library version) keep their
    identity, so a cache built for one training run serves the next.
    """
    config = getattr(module, "config", {})
    config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    config = {k: v for k, v in config.items() if k not in _PROVENANCE}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TensorCache:
    """key → {field: tensor}, for one kind of entry (e.g. 'latents', 'text')."""

    def __init__(self, folder: str | os.PathLike, kind: str):
        self.folder, self.kind = Path(folder), kind
        self.folder.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[Path, int]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read shard headers (after other processes added shards)."""
        for shard in sorted(self.folder.glob(f"{self.kind}-*.safetensors")):
            with safe_open(shard, framework="pt") as f:
                keys = json.loads(f.metadata()["keys"])
            for row, key in enumerate(keys):
                self._index.setdefault(key, (shard, row))

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def missing(self, keys: Iterable[str]) -> list[str]:
        seen, out = set(), []
        for k in keys:
            if k not in self._index and k not in seen:
                seen.add(k)
                out.append(k)
        return out

    def add(self, entries: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write entries as one new shard (atomically)."""
        if not entries:
            return
        keys = list(entries)
        tensors = {f"{row}.{field}": t.detach().cpu().contiguous()
                   for row, key in enumerate(keys) for field, t in entries[key].items()}
        name = f"{self.kind}-{uuid.uuid4().hex}.safetensors"
        tmp = self.folder / f".{name}.tmp"
        save_file(tensors, str(tmp), metadata={"keys": json.dumps(keys)})
        os.replace(tmp, self.folder / name)
        for row, key in enumerate(keys):
            self._index.setdefault(key, (self.folder / name, row))

    def load(self, keys: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
        """The entries for ``keys`` (all must be present), read shard by shard."""
        by_shard: dict[Path, list[tuple[str, int]]] = {}
        for key in dict.fromkeys(keys):
            shard, row = self._index[key]
            by_shard.setdefault(shard, []).append((key, row))
        out: dict[str, dict[str, torch.Tensor]] = {}
        for shard, rows in by_shard.items():
            with safe_open(shard, framework="pt") as f:
                fields: dict[str, list[str]] = {}
                for name in f.keys():
                    fields.setdefault(name.split(".", 1)[0], []).append(name)
                for key, row in rows:
                    out[key] = {n.split(".", 1)[1]: f.get_tensor(n) for n in fields[str(row)]}
        return out
