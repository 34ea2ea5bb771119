"""DPM-Solver++ (2M) and its SDE variant: second-order multistep samplers over a denoiser callable.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", §4
(multistep, data prediction) and its stochastic variant (DPM-Solver++ 2M SDE). In the log-SNR time
λ = log(α/σ), with α = √ᾱ, σ = √(1−ᾱ) and x̂_0 the model's data prediction, one step s → t is

    first order:  x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x̂_0(s),                        h = λ_t − λ_s
    2M:           x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) (D0 + D1/2),
                  D0 = x̂_0(s),  D1 = (x̂_0(s) − x̂_0(s_prev)) · h / (λ_s − λ_{s_prev})
    2M SDE:       x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) (D0 + D1/2) + σ_t √(1 − e^{−2h}) z

The first step is first order (no history yet) and so is the last, which lands on σ = 0, i.e. returns
x̂_0. Timesteps, the zero-terminal-SNR guard and the noise draws follow diffusers'
``DPMSolverMultistepScheduler`` (``algorithm_type`` "dpmsolver++" / "sde-dpmsolver++", ``solver_order=2``,
``solver_type="midpoint"``, ``final_sigmas_type="zero"``), so one seed gives one result in both.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .sampling import Callback, Denoiser, Generators, StepHook, randn_like
from .schedule import TIMESTEP_SPACINGS, Schedule, check_choice, check_steps, noise_levels, x0_eps_coefficients


def dpm_timesteps(num_steps: int, num_train_timesteps: int, spacing: str = "linspace",
                  steps_offset: int = 0) -> list[int]:
    """The N descending timesteps DPM-Solver visits, spaced as diffusers' ``DPMSolverMultistepScheduler``.

    Unlike DDIM's spacing, ``linspace`` and ``leading`` divide the range into N + 1 parts and drop the last.
    """
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    check_steps(num_steps, num_train_timesteps)
    T, N = num_train_timesteps, num_steps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N + 1).round()[::-1][:-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, N + 1) * (T // (N + 1))).round()[::-1][:-1].astype(np.int64) + steps_offset
    else:
        ts = np.arange(T, 0, -T / N).round().astype(np.int64) - 1
    return [int(t) for t in ts]


def karras_timesteps(schedule: Schedule, num_steps: int, rho: float = 7.0) -> tuple[list[int], list[float]]:
    """Karras et al. 2022 (eq. 5) noise levels for ``num_steps`` steps and the timesteps the model is called at.

    The levels k = σ/α run from the schedule's largest to its smallest, evenly in k^(1/ρ); each timestep is
    interpolated in log k between training timesteps and rounded, as diffusers' ``use_karras_sigmas=True`` does
    (it keeps fractional timesteps for squaredcos_cap_v2 schedules; we round those too).
    """
    T = schedule.num_train_timesteps
    check_steps(num_steps, T)
    levels = noise_levels(schedule.alphas_cumprod)
    ramp = np.linspace(0, 1, num_steps)
    k_max, k_min = levels[-1] ** (1 / rho), levels[0] ** (1 / rho)
    sigmas = (k_max + ramp * (k_min - k_max)) ** rho
    timesteps = np.interp(np.log(sigmas), np.log(levels), np.arange(T)).round().astype(np.int64)
    return [int(t) for t in timesteps], [float(k) for k in sigmas]


def _alpha_sigma_lambda(k: float) -> tuple[float, float, float]:
    """(α, σ, λ) at noise level k = σ/α (α² + σ² = 1)."""
    alpha = 1 / math.sqrt(k * k + 1)
    return alpha, k * alpha, -math.log(k)


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int],
    *,
    sigmas: Optional[Sequence[float]] = None,
    sde: bool = False,
    generator: Generators = None,
    callback: Optional[Callback] = None,
    after_step: Optional[StepHook] = None,
    disable_progress: bool = True,
) -> torch.Tensor:
    """DPM-Solver++ 2M (``sde=False``, deterministic) or 2M SDE from x_T over descending ``timesteps``.

    Use :func:`dpm_timesteps` for diffusers' spacing, or :func:`karras_timesteps` and pass its noise levels
    (σ/α per step) as ``sigmas``: the solver then steps between those levels while the model sees the
    (rounded) timesteps. The SDE variant draws z ~ N(0, I) at every step.
    """
    ts = list(timesteps)
    if sigmas is None:
        levels = noise_levels(schedule.alphas_cumprod)
        sigmas = [float(levels[t]) for t in ts]
    elif len(sigmas) != len(ts):
        raise ValueError(f"got {len(sigmas)} noise levels for {len(ts)} timesteps; pass one per timestep")
    previous: Optional[tuple[torch.Tensor, float]] = None  # (x̂_0, λ) of the last step
    for i, t in enumerate(tqdm(ts, disable=disable_progress, desc="DPM++ 2M SDE" if sde else "DPM++ 2M")):
        model_output = denoiser(x, t)  # 1. predict, as data
        alpha_s, sigma_s, lambda_s = _alpha_sigma_lambda(sigmas[i])
        p, q, _, _ = x0_eps_coefficients(alpha_s**2, schedule.prediction_type)
        x0 = torch.add(x * p, model_output, alpha=q)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
        noise = randn_like(x, generator) if sde else None  # 2. drawn every step, as diffusers does
        if i == len(ts) - 1:  # 3a. the last step lands on σ = 0: x_0 = x̂_0
            x = x0
        else:  # 3b. a first- (no history) or second-order multistep update to the next timestep
            alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(sigmas[i + 1])
            h = lambda_t - lambda_s
            d = x0
            if previous is not None:  # D0 + D1/2 = x̂_0 + c (x̂_0 − x̂_0,prev)
                x0_prev, lambda_prev = previous
                c = 0.5 * h / (lambda_s - lambda_prev)
                d = torch.add(x0 * (1 + c), x0_prev, alpha=-c)
            if sde:
                x = torch.add(x * (sigma_t / sigma_s * math.exp(-h)), d, alpha=alpha_t * -math.expm1(-2 * h))
                x = x.add_(noise, alpha=sigma_t * math.sqrt(-math.expm1(-2 * h)))
            else:
                x = torch.add(x * (sigma_t / sigma_s), d, alpha=-alpha_t * math.expm1(-h))
        previous = (x0, lambda_s)
        if after_step is not None:
            x = after_step(i, x)
    return x
