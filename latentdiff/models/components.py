"""The frozen networks of one model (:class:`Components`) and the one error type for a model that cannot be used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..core.schedule import Schedule


class ModelError(ValueError):
    """A model folder or file that cannot be used, with a one-line reason and fix."""


@dataclass
class Components:
    """The frozen networks and schedule of one model, on one device and dtype.

    ``path`` is the model folder, or the checkpoint file for a model loaded from a single file."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    path: Optional[Path] = None

    @property
    def schedule(self) -> Schedule:
        return Schedule.from_config(self.scheduler_config)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side: 2^(number of VAE down blocks − 1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return (self.unet if self.unet is not None else self.text_encoder).device

    @property
    def dtype(self) -> torch.dtype:
        return (self.unet if self.unet is not None else self.text_encoder).dtype


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module
