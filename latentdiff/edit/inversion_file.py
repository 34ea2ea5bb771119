"""An inversion's file (one safetensors file, settings as JSON in its header) and the fingerprint that ties it
to the model it was made with."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from ..models import Components

FILE_FORMAT, FILE_VERSION = "latentdiff-inversion", "1"

_VOLATILE_KEYS = ("transformers_version", "torch_dtype", "dtype")  # and every key starting with "_"
PROBE_VALUES = 16  # leading values of each probed tensor kept in the fingerprint


def _config(config) -> dict:
    config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in _VOLATILE_KEYS}


def model_fingerprint(components: Components) -> dict:
    """Cheap identity of a model: sha256 of its configs (UNet, VAE, text encoder, schedule) and of a few
    weight tensors (text encoder's first, UNet conv_in/conv_out, VAE encoder conv_in), plus the leading
    values of those tensors so that the same model loaded in another dtype is still recognized."""
    c = components
    configs = json.dumps({"unet": _config(c.unet.config), "vae": _config(c.vae.config),
                          "text_encoder": _config(c.text_encoder.config), "scheduler": _config(c.scheduler_config)},
                         sort_keys=True, default=str)
    tensors = [next(c.text_encoder.parameters()), c.unet.conv_in.weight, c.unet.conv_out.weight,
               c.vae.encoder.conv_in.weight]
    digest = hashlib.sha256(configs.encode())
    config_id = digest.hexdigest()[:16]
    probe = []
    for tensor in tensors:
        values = tensor.detach().float().cpu().contiguous()
        digest.update(values.numpy().tobytes())
        probe += values.flatten()[:PROBE_VALUES].tolist()
    return {"id": digest.hexdigest()[:16], "config": config_id, "dtype": str(c.dtype).removeprefix("torch."),
            "probe": probe}


def check_same_model(path, saved: dict, current: dict) -> None:
    """ValueError unless ``saved`` and ``current`` fingerprints are one model (exactly, or in another dtype)."""
    same = saved.get("id") == current["id"]
    if not same and saved.get("config") == current["config"] and saved.get("dtype") != current["dtype"]:
        probe = torch.tensor(saved.get("probe", []), dtype=torch.float64)
        ours = torch.tensor(current["probe"], dtype=torch.float64)
        same = probe.shape == ours.shape and torch.allclose(probe, ours, rtol=1e-2, atol=1e-4)
    if not same:
        raise ValueError(f"inversion '{path}' was made with another model (fingerprint {saved.get('id')}, this "
                         f"model is {current['id']}); invert again with this model")


def write_inversion(path, tensors: dict, meta: dict) -> Path:
    """One safetensors file, settings as JSON in its header; written to a temporary name, then renamed."""
    from safetensors.torch import save_file

    path = Path(path)
    header = {"format": FILE_FORMAT, "version": FILE_VERSION, "inversion": json.dumps(meta)}
    if not path.parent.is_dir():
        raise ValueError(f"cannot write inversion '{path}': folder '{path.parent}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().float().cpu().clone() for k, v in tensors.items()}, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_inversion(path) -> tuple[dict, dict]:
    """(tensors, settings) of an inversion file; ValueError with one line when it is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"inversion '{path}' does not exist" if not path.exists() else
                         f"inversion '{path}' is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"'{path}' is not an inversion file (not readable as safetensors: {reason})") from None
    if header.get("format") != FILE_FORMAT or "x_T" not in tensors:
        raise ValueError(f"'{path}' is a safetensors file but not a latentdiff inversion; make one with invert()")
    if header.get("version") != FILE_VERSION:
        raise ValueError(f"inversion '{path}' has format version {header.get('version')}, this latentdiff reads "
                         f"{FILE_VERSION}; invert again")
    try:
        return tensors, json.loads(header["inversion"])
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"inversion '{path}' has unreadable settings in its header; invert again") from None
