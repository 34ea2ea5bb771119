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

from .sampling import Callback, Denoiser, Generators, _report, randn_like
from .schedule import Schedule, check_choice, x0_eps_coefficients

ZERO_SNR_ALPHA_BAR = 2.0**-24  # ᾱ at a zero-SNR step, so that λ stays finite (diffusers' choice)


def dpm_timesteps(num_steps: int, num_train_timesteps: int, spacing: str = "linspace",
                  steps_offset: int = 0) -> list[int]:
    """The N descending timesteps DPM-Solver visits, spaced as diffusers' ``DPMSolverMultistepScheduler``.

    Unlike DDIM's spacing, ``linspace`` and ``leading`` divide the range into N + 1 parts and drop the last.
    """
    check_choice("timestep_spacing", spacing, ("leading", "trailing", "linspace"))
    T, N = num_train_timesteps, num_steps
    if not isinstance(N, int) or not 1 <= N <= T:
        raise ValueError(f"steps={N!r} must be an integer between 1 and num_train_timesteps={T}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N + 1).round()[::-1][:-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, N + 1) * (T // (N + 1))).round()[::-1][:-1].astype(np.int64) + steps_offset
    else:
        ts = np.arange(T, 0, -T / N).round().astype(np.int64) - 1
    return [int(t) for t in ts]


def _alpha_sigma_lambda(schedule: Schedule, t: int) -> tuple[float, float, float]:
    """(α_t, σ_t, λ_t) at a training timestep; ᾱ = 0 (zero terminal SNR) is lifted to 2⁻²⁴."""
    a = schedule.alpha_bar(t) or ZERO_SNR_ALPHA_BAR
    alpha, sigma = math.sqrt(a), math.sqrt(1 - a)
    return alpha, sigma, math.log(alpha) - math.log(sigma)


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int],
    *,
    sde: bool = False,
    generator: Generators = None,
    callback: Optional[Callback] = None,
    disable_progress: bool = True,
) -> torch.Tensor:
    """DPM-Solver++ 2M (``sde=False``, deterministic) or 2M SDE from x_T over descending ``timesteps``.

    Use :func:`dpm_timesteps` for diffusers' spacing. The SDE variant draws z ~ N(0, I) at every step.
    """
    ts = list(timesteps)
    previous: Optional[tuple[torch.Tensor, float]] = None  # (x̂_0, λ) of the last step
    for i, t in enumerate(tqdm(ts, disable=disable_progress, desc="DPM++ 2M SDE" if sde else "DPM++ 2M")):
        model_output = denoiser(x, t)  # 1. predict, as data
        _report(callback, i, t, x, model_output, schedule)
        alpha_s, sigma_s, lambda_s = _alpha_sigma_lambda(schedule, t)
        p, q, _, _ = x0_eps_coefficients(alpha_s**2, schedule.prediction_type)
        x0 = torch.add(x * p, model_output, alpha=q)
        noise = randn_like(x, generator) if sde else None  # 2. drawn every step, as diffusers does
        if i == len(ts) - 1:  # 3a. the last step lands on σ = 0: x_0 = x̂_0
            x = x0
        else:  # 3b. a first- (no history) or second-order multistep update to the next timestep
            alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(schedule, ts[i + 1])
            h = lambda_t - lambda_s
            d = x0
            if previous is not None:
                x0_prev, lambda_prev = previous
                d = x0 + (x0 - x0_prev) * (0.5 * h / (lambda_s - lambda_prev))  # D0 + D1/2
            if sde:
                x = torch.add(x * (sigma_t / sigma_s * math.exp(-h)), d, alpha=alpha_t * -math.expm1(-2 * h))
                x = x.add_(noise, alpha=sigma_t * math.sqrt(-math.expm1(-2 * h)))
            else:
                x = torch.add(x * (sigma_t / sigma_s), d, alpha=-alpha_t * math.expm1(-h))
        previous = (x0, lambda_s)
    return x
