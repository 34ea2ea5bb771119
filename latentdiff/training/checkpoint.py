"""Training checkpoints: written under a temporary name and renamed when complete; keep the last K.

A checkpoint folder ``checkpoints/step-0000500`` holds Accelerate's state (model weights as
safetensors, optimizer, LR scheduler, RNG states), ``ema.safetensors``, ``state.json`` (global step)
and ``config.yaml`` (the resolved run configuration). A folder only ever appears under its final name
once everything is in it, so a run killed at any moment leaves no checkpoint that looks valid but isn't.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Optional

from safetensors.torch import load_file, save_file

PATTERN = re.compile(r"^step-(\d+)$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and PATTERN.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


def resolve_resume(output_dir: str | Path, resume: Optional[str]) -> Optional[Path]:
    """``latest`` → the newest complete checkpoint (None when there is none yet); a path → that checkpoint."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ValueError(f"--resume '{resume}' is not a complete checkpoint folder (no state.json); "
                         f"use --resume latest or one of {checkpoints_dir(output_dir)}/step-*")
    return path


def save_checkpoint(accelerator, output_dir: str | Path, step: int, config, ema=None, keep: int = 3) -> Path:
    """Collectively save a checkpoint (call on every process); returns its final path."""
    folder = checkpoints_dir(output_dir)
    final = folder / f"step-{step:07d}"
    tmp = folder / f".tmp-step-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        if ema is not None:
            save_file({str(i): s.contiguous() for i, s in enumerate(ema.shadow)}, str(tmp / "ema.safetensors"),
                      metadata={"decay": str(ema.decay)})
        config.save(tmp / "config.yaml")
        (tmp / "state.json").write_text(json.dumps({"global_step": step}))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, ema=None) -> int:
    """Restore Accelerate's state and the EMA; returns the global step to continue from."""
    accelerator.load_state(str(path))
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise ValueError(f"checkpoint '{path}' has no EMA weights but train.ema_decay is set")
        saved = load_file(str(path / "ema.safetensors"))
        ema.load_state_dict({"decay": ema.decay, "shadow": [saved[str(i)] for i in range(len(ema.shadow))]})
    return json.loads((path / "state.json").read_text())["global_step"]


def remove_stale_temporaries(output_dir: str | Path) -> None:
    """Delete half-written checkpoints left by a killed run."""
    folder = checkpoints_dir(output_dir)
    if folder.is_dir():
        for p in folder.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)
