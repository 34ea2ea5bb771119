"""Exponential moving average of model weights (Polyak averaging), checkpointable through Accelerate."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    """θ_ema ← d_n·θ_ema + (1 − d_n)·θ after optimizer step n, over the trainable parameters.

    d_0 = 0 (a copy), then d_n = min(decay, (1 + n) / (10 + n)): the warm-up of diffusers' EMAModel, so that the average does
    not keep the random initial weights for thousands of steps (0.9999^2500 ≈ 0.78 of them without it).
    """

    def __init__(self, parameters, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay={decay!r} must be in (0, 1), or null to disable EMA")
        self.decay = decay
        self.params = [p for p in parameters if p.requires_grad]
        self.shadow = [p.detach().clone().float() for p in self.params]

    def decay_at(self, step: int) -> float:
        return 0.0 if step <= 0 else min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Average in the current weights after optimizer step ``step`` (0-based)."""
        weight = 1.0 - self.decay_at(step)
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), weight)

    @contextmanager
    def swapped_in(self):
        """Temporarily load the EMA weights into the model (for validation or export)."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(backup, self.params):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved)
