"""Euler and Euler ancestral samplers (Karras et al. 2022, Algorithm 1 without churn; k-diffusion's ancestral
variant) in the noise-level variable k = σ/α, as diffusers' ``EulerDiscreteScheduler`` and
``EulerAncestralDiscreteScheduler`` run them.

The sampler works on y = x/α = x √(k²+1) (variance exploding: y = x_0 + k ε); the model sees x = y/√(k²+1).
One step from level k to k' with the data prediction x̂_0:

    Euler:           y' = y + (k' − k) · (y − x̂_0)/k
    Euler ancestral: k↑ = √(k'² (k² − k'²)/k²),  k↓ = √(k'² − k↑²);  y' = y + (k↓ − k)(y − x̂_0)/k + k↑ z

The last level is 0, where y = x_0. Timesteps, noise levels (linearly interpolated in t, so ``linspace`` spacing
calls the model at fractional timesteps) and the initial noise scale follow diffusers, so that one seed gives one
result in both.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .sampling import Callback, Denoiser, Generators, StepHook, randn_like
from .schedule import Schedule, check_steps, noise_levels, x0_eps_coefficients


def euler_timesteps(schedule: Schedule, num_steps: int) -> tuple[list[float], list[float]]:
    """(timesteps, noise levels k = σ/α) for ``num_steps`` steps, spaced as diffusers' Euler schedulers space them.

    Whole timesteps come back as ints (what a :data:`~latentdiff.core.sampling.Denoiser` takes); ``linspace`` gives
    fractional ones, whose levels are interpolated linearly between training timesteps (the UNet takes them).
    """
    T, N = schedule.num_train_timesteps, num_steps
    if schedule.timestep_spacing == "linspace":  # unrounded, unlike DDIM's
        check_steps(N, T)
        ts = np.linspace(0, T - 1, N, dtype=np.float32)[::-1].astype(np.float64)
    else:  # leading and trailing as DDIM spaces them
        ts = np.array(schedule.timesteps(N), dtype=np.float64)
    levels = np.interp(ts, np.arange(T), noise_levels(schedule.alphas_cumprod))
    return [int(t) if t.is_integer() else float(t) for t in ts], [float(k) for k in levels]


def initial_noise_scale(spacing: str, sigmas: Sequence[float]) -> float:
    """What diffusers multiplies N(0, I) noise by to start (``init_noise_sigma``), relative to the exact
    √(k_max² + 1): for ``linspace`` and ``trailing`` it takes k_max itself, 1/(2 k_max²) less (0.2 % for SD)."""
    k = max(sigmas)
    return k / math.sqrt(k * k + 1) if spacing in ("linspace", "trailing") else 1.0


def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[float],
    sigmas: Sequence[float],
    *,
    ancestral: bool = False,
    noise_scale: float = 1.0,
    generator: Generators = None,
    callback: Optional[Callback] = None,
    after_step: Optional[StepHook] = None,
    disable_progress: bool = True,
) -> torch.Tensor:
    """Euler (``ancestral=False``) or Euler ancestral sampling from noise ``x`` ~ N(0, I) over ``timesteps`` and their
    noise levels ``sigmas`` (:func:`euler_timesteps`); ``noise_scale`` from :func:`initial_noise_scale` matches
    diffusers' start. The ancestral variant draws z ~ N(0, I) at every step, as diffusers does."""
    if len(sigmas) != len(timesteps):
        raise ValueError(f"got {len(sigmas)} noise levels for {len(timesteps)} timesteps; pass one per timestep")
    y = x * (noise_scale * math.sqrt(sigmas[0] ** 2 + 1))
    for i, t in enumerate(tqdm(timesteps, disable=disable_progress, desc="Euler a" if ancestral else "Euler")):
        k, k_next = sigmas[i], (sigmas[i + 1] if i + 1 < len(sigmas) else 0.0)
        alpha = 1 / math.sqrt(k * k + 1)
        x = y * alpha
        model_output = denoiser(x, t)  # 1. predict at x = y/√(k²+1)
        p, q, _, _ = x0_eps_coefficients(alpha * alpha, schedule.prediction_type)
        x0 = torch.add(x * p, model_output, alpha=q)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
        k_down, k_up = k_next, 0.0
        if ancestral:  # 2. split the step into a deterministic part down to k↓ and fresh noise k↑
            k_up = math.sqrt(k_next**2 * (k * k - k_next**2) / (k * k))
            k_down = math.sqrt(k_next**2 - k_up**2)
            noise = randn_like(y, generator)
        y = torch.add(y * (k_down / k), x0, alpha=1 - k_down / k)  # 3. y + (k↓ − k)(y − x̂_0)/k
        if ancestral:
            y = y.add_(noise, alpha=k_up)
        if after_step is not None:  # the hook sees x = y/√(k'²+1), as every sampler's latents
            scale = math.sqrt(k_next * k_next + 1)
            y = after_step(i, y / scale) * scale
    return y
