"""DDPM and DDIM samplers and DDIM inversion: pure functions over a denoiser callable.

A denoiser is any callable ``denoiser(x, t) -> model_output`` where ``t`` is an integer training
timestep and the output follows ``schedule.prediction_type``. Conditioning and guidance live in the
callable (see :mod:`latentdiff.core.guidance`), never here.

Randomness comes only from an explicit ``torch.Generator`` and is drawn in the order and shape
diffusers draws it (``DDIMScheduler.step``, ``DDPMScheduler.step``), so that one seed gives one
result in both.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .schedule import Schedule, x0_eps_coefficients

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]
Callback = Callable[[dict], None]
# after_step(i, x) -> x: called after step i with the latents it produced (at the next step's noise level, or the
# result after the last step); what it returns continues the run, as diffusers' inpainting re-imposes known pixels
StepHook = Callable[[int, torch.Tensor], torch.Tensor]

FIXED_POINT_TOL = 1e-3  # fixed-point inversion stops once an update moves x_t by less than this of its RMS


Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def randn(shape, generator: Generators, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """N(0, I) noise drawn on the generator's device then moved, one generator per sample when given a list.

    This is the order and placement of diffusers' ``randn_tensor``, so seeds give the same numbers.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per sample")
        return torch.cat([randn((1, *shape[1:]), g, dtype, device) for g in generator])
    source = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)


def randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    return randn(x.shape, generator, x.dtype, x.device)


def ddim_sigma(alpha_bar: float, alpha_bar_prev: float, eta: float) -> float:
    """σ_t = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t−1}) (Song et al. 2021, eq. 16)."""
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))


def check_eta(eta: float) -> None:
    """ValueError naming η unless it is >= 0 (the one check of η: sample_ddim and the ddim plan call it)."""
    if not eta >= 0:
        raise ValueError(f"eta={eta!r} must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like)")


def ddim_coefficients(alpha_bar: float, alpha_bar_next: float, prediction_type: str,
                      sigma: float = 0.0) -> tuple[float, float]:
    """(a, b) of the unclipped DDIM step without its noise term, which is linear: a·x + b·model_output."""
    p, q, r, s = x0_eps_coefficients(alpha_bar, prediction_type)
    c_x0, c_eps = math.sqrt(alpha_bar_next), math.sqrt(max(1 - alpha_bar_next - sigma**2, 0.0))
    return c_x0 * p + c_eps * r, c_x0 * q + c_eps * s


def ddim_step(
    x: torch.Tensor,
    model_output: torch.Tensor,
    alpha_bar: float,
    alpha_bar_next: float,
    prediction_type: str,
    *,
    sigma: float = 0.0,
    noise: Optional[torch.Tensor] = None,
    clip: Optional[float] = None,
) -> torch.Tensor:
    """One DDIM update (Song et al. 2021, eq. 12) from noise level ᾱ to ᾱ_next.

    x_next = √ᾱ_next x̂_0 + √(1−ᾱ_next−σ²) ε̂ + σ z. With ᾱ_next < ᾱ this samples; with ᾱ_next > ᾱ
    (and σ = 0) it is DDIM inversion, the same step run forward in time.
    """
    if clip is None:
        # Unclipped, the whole step is linear in (x, out): fold the coefficients in float64.
        a, b = ddim_coefficients(alpha_bar, alpha_bar_next, prediction_type, sigma)
        out = torch.add(x * a, model_output, alpha=b)
    else:
        p, q, r, s = x0_eps_coefficients(alpha_bar, prediction_type)
        c_x0, c_eps = math.sqrt(alpha_bar_next), math.sqrt(max(1 - alpha_bar_next - sigma**2, 0.0))
        x0 = torch.add(x * p, model_output, alpha=q).clamp_(-clip, clip)
        eps = torch.add(x * r, model_output, alpha=s)
        out = torch.add(x0 * c_x0, eps, alpha=c_eps)
    if noise is not None:
        out = out.add_(noise, alpha=sigma)
    return out


def _report(callback, i, t, x, model_output, schedule):
    if callback is not None:
        x0, _ = schedule.predict_x0_eps(model_output, x, t)
        callback({"i": i, "t": t, "x": x, "denoised": x0})


def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int],
    *,
    eta: float = 0.0,
    stride: Optional[int] = None,
    generator: Generators = None,
    callback: Optional[Callback] = None,
    after_step: Optional[StepHook] = None,
    disable_progress: bool = True,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021) from x_T over descending ``timesteps``; η = 0 is deterministic.

    As in diffusers' ``DDIMScheduler``, the step from t lands on t − T//N, and past t = 0 on
    ``schedule.final_alpha_cumprod``; N = len(timesteps) unless ``stride`` (T//N) is given, as it is when
    ``timesteps`` are the tail of an N-step schedule (image to image). Noise z ~ N(0, I) is drawn at every step
    when η > 0.
    """
    check_eta(eta)
    stride = stride or schedule.num_train_timesteps // len(timesteps)
    clip = schedule.clip_sample_range if schedule.clip_sample else None
    for i, t in enumerate(tqdm(timesteps, disable=disable_progress, desc="DDIM")):
        a, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t - stride)
        sigma = ddim_sigma(a, a_prev, eta) if eta > 0 else 0.0
        model_output = denoiser(x, t)  # 1. predict
        _report(callback, i, t, x, model_output, schedule)
        noise = randn_like(x, generator) if eta > 0 else None  # 2. draw z as diffusers does
        x = ddim_step(x, model_output, a, a_prev, schedule.prediction_type, sigma=sigma, noise=noise, clip=clip)
        if after_step is not None:
            x = after_step(i, x)
    return x


def ddim_invert(
    denoiser: Denoiser,
    x0: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int],
    *,
    callback: Optional[Callback] = None,
    disable_progress: bool = True,
    fixed_point_iters: int = 0,
    fixed_point_tol: float = FIXED_POINT_TOL,
) -> torch.Tensor:
    """DDIM inversion x_0 → x_T: the deterministic DDIM step of :func:`sample_ddim` run forward in time.

    ``timesteps`` are the (descending) sampling timesteps; they are visited in reverse, each step
    moving from t − T//N to t with the model evaluated at t (diffusers' ``DDIMInverseScheduler``).
    Sampling the result with the same timesteps and denoiser approximately returns x_0.

    The plain step evaluates the model at the step's start, x_{t−T//N}; sampling back evaluates it at the
    step's end, x_t. ``fixed_point_iters`` > 0 closes that gap (fixed-point inversion, as in Pan et al.
    2023, "Effective Real Image Editing with Accelerated Iterative Diffusion Inversion"): x_t is refined
    by x_t ← the x that the sampling step from (x, model(x, t)) maps exactly onto x_{t−T//N}, at most
    ``fixed_point_iters`` times per step, stopping early once an update moves x_t by less than
    ``fixed_point_tol`` of its RMS. Each iteration costs one model evaluation. The sampling step is
    affine in (x, model output), so its inverse is closed-form; clipped steps are not, and are refused.
    Refined steps after the first start from the previous step's last model output (evaluated near
    x_{t−T//N}, one timestep earlier) instead of a fresh evaluation at x_{t−T//N}: the plain step's
    evaluation is saved, and on the default model one iteration then usually meets the tolerance.
    """
    if fixed_point_iters < 0:
        raise ValueError(f"fixed_point_iters={fixed_point_iters!r} must be >= 0")
    stride = schedule.num_train_timesteps // len(timesteps)
    clip = schedule.clip_sample_range if schedule.clip_sample else None
    if fixed_point_iters and clip is not None:
        raise ValueError("fixed-point DDIM inversion needs an unclipped step, but the schedule has clip_sample=True; "
                         "use 0 fixed-point iterations (--fixed-point-iters 0)")
    T = schedule.num_train_timesteps
    x, model_output = x0, None
    for i, t in enumerate(tqdm(list(reversed(timesteps)), disable=disable_progress, desc="DDIM inversion")):
        a_from, a_to = schedule.alpha_bar(min(t - stride, T - 1)), schedule.alpha_bar(t)
        if not fixed_point_iters or model_output is None:
            model_output = denoiser(x, t)  # refined steps start from the previous step's last output instead
        x_next = ddim_step(x, model_output, a_from, a_to, schedule.prediction_type, clip=clip)
        used = 0
        if fixed_point_iters:
            # the sampling step back, x_{t−T//N} = a·x_t + b·model(x_t, t), solved for x_t
            a, b = ddim_coefficients(a_to, a_from, schedule.prediction_type)
            for _ in range(fixed_point_iters):
                model_output = denoiser(x_next, t)
                refined = torch.add(x, model_output, alpha=-b).div_(a)
                moved = (refined - x_next).pow(2).mean().sqrt() / refined.pow(2).mean().sqrt().clamp(min=1e-12)
                x_next, used = refined, used + 1
                if moved.item() < fixed_point_tol:
                    break
        x = x_next
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "fixed_point_iters": used})
    return x


def ddpm_coefficients(alpha_bar: float, alpha_bar_prev: float, variance_type: str) -> tuple[float, float, float]:
    """(c_x0, c_x, σ) of the posterior q(x_{t−1} | x_t, x_0) over a (possibly strided) step.

    μ̃ = c_x0 x_0 + c_x x_t (Ho et al. 2020, eq. 7) with β_t = 1 − ᾱ_t/ᾱ_{t−1}; σ² is β̃_t
    (``fixed_small``, clamped at 1e-20 like diffusers) or β_t (``fixed_large``).
    """
    beta = 1 - alpha_bar / alpha_bar_prev
    c_x0 = math.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar)
    c_x = math.sqrt(1 - beta) * (1 - alpha_bar_prev) / (1 - alpha_bar)
    var = max((1 - alpha_bar_prev) / (1 - alpha_bar) * beta, 1e-20) if variance_type == "fixed_small" else beta
    return c_x0, c_x, math.sqrt(var)


def ddpm_step(
    x: torch.Tensor,
    model_output: torch.Tensor,
    alpha_bar: float,
    alpha_bar_prev: float,
    prediction_type: str,
    *,
    variance_type: str = "fixed_small",
    noise: Optional[torch.Tensor] = None,
    clip: Optional[float] = None,
) -> torch.Tensor:
    """One ancestral step x_t → x_{t−1} = μ̃(x_t, x̂_0) + σ z (Ho et al. 2020, Algorithm 2, line 4)."""
    c_x0, c_x, sigma = ddpm_coefficients(alpha_bar, alpha_bar_prev, variance_type)
    p, q, _, _ = x0_eps_coefficients(alpha_bar, prediction_type)
    if clip is None:  # μ̃ is linear in (x, out): fold the coefficients in float64
        mean = torch.add(x * (c_x0 * p + c_x), model_output, alpha=c_x0 * q)
    else:
        x0 = torch.add(x * p, model_output, alpha=q).clamp_(-clip, clip)
        mean = torch.add(x * c_x, x0, alpha=c_x0)
    if noise is not None:
        mean = mean.add_(noise, alpha=sigma)
    return mean


def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    timesteps: Sequence[int],
    *,
    generator: Generators = None,
    callback: Optional[Callback] = None,
    after_step: Optional[StepHook] = None,
    disable_progress: bool = True,
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) over descending ``timesteps``.

    With all T timesteps this is the full chain; with fewer, each step goes to the next listed
    timestep using the strided β (as diffusers' ``DDPMScheduler``). Noise is drawn whenever t > 0.
    """
    clip = schedule.clip_sample_range if schedule.clip_sample else None
    ts = list(timesteps)
    for i, t in enumerate(tqdm(ts, disable=disable_progress, desc="DDPM")):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        a, a_prev = schedule.alpha_bar(t), (schedule.alpha_bar(t_prev) if t_prev >= 0 else 1.0)
        model_output = denoiser(x, t)  # 1. predict
        _report(callback, i, t, x, model_output, schedule)
        noise = randn_like(x, generator) if t > 0 else None  # 2. z ~ N(0, I), none at t = 0
        x = ddpm_step(  # 3. x_{t-1} = mu + sigma z
            x, model_output, a, a_prev, schedule.prediction_type,
            variance_type=schedule.variance_type, noise=noise, clip=clip,
        )
        if after_step is not None:
            x = after_step(i, x)
    return x
