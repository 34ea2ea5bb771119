"""Deterministic stand-ins for a network, shared by the tests."""

import math

import torch


def fake_denoiser(x: torch.Tensor, t: int) -> torch.Tensor:
    """A smooth, bounded, timestep-dependent function of x: same input, same output, every time."""
    return torch.tanh(0.7 * x) * (0.8 + 0.2 * math.cos(t / 97.0)) + 0.05 * math.sin(t / 31.0)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours − ref| relative to max |ref|."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()

