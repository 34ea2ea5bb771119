"""Image similarity: PSNR and SSIM (Wang et al. 2004) on uint8 RGB images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MAX_VALUE = 255.0
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Gaussian window of the SSIM paper
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _as_float(image) -> torch.Tensor:
    """(3, H, W) float64 in [0, 255] from a PIL image or an (H, W, 3) uint8 array."""
    array = np.asarray(image, dtype=np.float64)
    return torch.from_numpy(array).permute(2, 0, 1)


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical images."""
    mse = (_as_float(a) - _as_float(b)).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(MAX_VALUE**2 / mse)


def ssim(a, b) -> float:
    """Mean SSIM over channels and 'valid' window positions (Gaussian 11×11, σ = 1.5, K = 0.01, 0.03)."""
    x, y = _as_float(a)[:, None], _as_float(b)[:, None]  # (3, 1, H, W)
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]  # (1, 1, 11, 11)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"images must be at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels for SSIM")

    def blur(t):
        return F.conv2d(t, window)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (SSIM_K1 * MAX_VALUE) ** 2, (SSIM_K2 * MAX_VALUE) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean().item()
