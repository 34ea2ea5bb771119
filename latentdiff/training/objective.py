"""The denoising training objective: noised inputs, targets, min-SNR weighting, caption dropout.

All randomness comes from an explicit generator so that a step can be replayed exactly on resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..core.schedule import Schedule


@dataclass
class NoisedBatch:
    x_t: torch.Tensor  # (B, C, h, w) model input
    t: torch.Tensor  # (B,) int64 timesteps
    target: torch.Tensor  # what the model should predict
    weight: torch.Tensor  # (B,) per-sample loss weight


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """ε ~ N(0, I), plus ``noise_offset`` × a per-(sample, channel) constant (Guttenberg 2023, 'noise offset')."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    if noise_offset:
        offset = torch.randn(latents.shape[:2], generator=generator, dtype=torch.float32).to(latents)
        noise = noise + noise_offset * offset[:, :, None, None]
    return noise


def min_snr_weight(snr: torch.Tensor, gamma: Optional[float], prediction_type: str) -> torch.Tensor:
    """Per-sample loss weight of min-SNR-γ (Hang et al. 2023, eq. 9) for the model's parameterization.

    On x₀ the weight is min(SNR, γ); an ε loss equals an x₀ loss divided by SNR, and a v loss one divided
    by SNR + 1, so those weights become min(SNR, γ)/SNR and min(SNR, γ)/(SNR + 1). None: all ones.
    """
    if gamma is None:
        return torch.ones_like(snr, dtype=torch.float32)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        weight = clipped / snr
    elif prediction_type == "v_prediction":
        weight = clipped / (snr + 1)
    else:
        weight = clipped
    return weight.float()


def noised_batch(
    latents: torch.Tensor,
    schedule: Schedule,
    generator: torch.Generator,
    *,
    noise_offset: float = 0.0,
    snr_gamma: Optional[float] = None,
) -> NoisedBatch:
    """t ~ U{0, …, T−1}, ε, x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε, and the target for the schedule's prediction type."""
    t = torch.randint(0, schedule.num_train_timesteps, (latents.shape[0],), generator=generator)
    noise = sample_noise(latents, generator, noise_offset)
    t_dev = t.to(latents.device)
    return NoisedBatch(
        x_t=schedule.add_noise(latents, noise, t_dev),
        t=t_dev,
        target=schedule.target(latents, noise, t_dev),
        weight=min_snr_weight(schedule.snr(t), snr_gamma, schedule.prediction_type).to(latents.device),
    )


def drop_captions(embeddings: torch.Tensor, empty: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each sample's text embedding by the empty-prompt embedding (L, D) with probability p (CFG training);
    embeddings of n chunks (B, n·L, D) are replaced by n empty chunks."""
    if p <= 0:
        return embeddings
    drop = torch.rand(embeddings.shape[0], generator=generator) < p  # (B,)
    empty = empty.repeat(embeddings.shape[1] // empty.shape[0], 1)  # (n·L, D)
    return torch.where(drop.to(embeddings.device)[:, None, None], empty.to(embeddings), embeddings)


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over samples of weight × per-sample MSE, computed in float32."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=list(range(1, target.ndim)))
    return (per_sample * weight).mean()
