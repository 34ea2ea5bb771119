"""PSNR and SSIM against closed forms."""

import math

import numpy as np
import pytest

from latentdiff.edit.metrics import psnr, ssim


def test_psnr_closed_form():
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[...] = 10  # MSE = 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr(a, a) == math.inf


def test_ssim_identity_constant_images_and_noise():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert ssim(img, img) == pytest.approx(1.0)
    a, b = np.full((16, 16, 3), 100, np.uint8), np.full((16, 16, 3), 150, np.uint8)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    # constant images: no variance, SSIM is the luminance term alone
    assert ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1) * c2 / c2)
    noisy = np.clip(img + rng.normal(0, 40, img.shape), 0, 255).astype(np.uint8)
    very_noisy = np.clip(img + rng.normal(0, 100, img.shape), 0, 255).astype(np.uint8)
    assert 1 > ssim(img, noisy) > ssim(img, very_noisy) > 0
