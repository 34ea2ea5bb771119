"""Live previews: the model's own VAE decode of the first image's current prediction, now and then.

A latent → RGB linear map (what UIs use for SD 1.x) holds only for VAEs whose latents are near-linear in color;
fitted by least squares to the default model's VAE it maps black to (164, 141, 133), so it is not used. A decode
is exact for any model; it runs on the worker thread (which owns the networks), only while someone polls
``/progress``, and at most once per ``interval`` seconds or ``overhead`` of the time since the last one, so it
costs at most ~20 % of a job even where a decode is slow (a CPU decoding SD at 512 px).
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from ..models import Components, decode_latents, to_uint8

INTERVAL = 0.5  # seconds, at least, between two previews
OVERHEAD = 0.2  # a preview's decode takes at most this fraction of the time between two of them


class VaePreview:
    """``preview(latents)`` → (H, W, 3) uint8 of latents (C, h, w), or None while the last one is too recent."""

    def __init__(self, components: Components, interval: float = INTERVAL, overhead: float = OVERHEAD):
        self.components, self.interval, self.overhead = components, interval, overhead
        self._next = 0.0

    def __call__(self, latents: torch.Tensor) -> Optional[np.ndarray]:
        start = time.monotonic()
        if start < self._next:
            return None
        with torch.inference_mode():
            image = to_uint8(decode_latents(self.components, latents[None]))[0]  # (H, W, 3)
        took = time.monotonic() - start
        self._next = start + max(self.interval, took / self.overhead)
        return image
