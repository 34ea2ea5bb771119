"""The networks as the editing methods see them: float32 functions of (x, t, text embeddings), the plan of
sampling steps, and the classifier-free-guided DDIM step."""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.guidance import UNetModel
from ..core.sampling import ddim_step
from ..core.schedule import Schedule
from ..models import Components
from ..pipelines.prompts import encode_prompts

NULL_PROMPT = ""  # the "null text" of classifier-free guidance


def float32_model(components: Components):
    """model(x, t, embeddings) -> float32 output; inputs cast to the UNet's dtype (fp32 throughout when it is)."""
    unet = UNetModel(components.unet)
    dtype = components.unet.dtype
    return lambda x, t, emb: unet(x.to(dtype), t, emb.to(dtype)).float()


def embed(components: Components, prompts: Sequence[str]) -> torch.Tensor:
    """(B, L, D) float32 text embeddings as a normal (not inference-mode) tensor."""
    return encode_prompts(components, list(prompts)).float().clone()


def step_plan(components: Components, steps: int):
    """(i, t, ᾱ_t, ᾱ_next) of each sampling step, as sample_ddim visits them (diffusers' DDIMScheduler)."""
    schedule = components.schedule
    timesteps = schedule.timesteps(steps)
    stride = schedule.num_train_timesteps // len(timesteps)
    return [(i, t, schedule.alpha_bar(t), schedule.alpha_bar(t - stride)) for i, t in enumerate(timesteps)]


def guided_step(schedule: Schedule, x, out_uncond, out_cond, scale, a, a_next, sigma: float = 0.0):
    """The classifier-free-guided DDIM step: ddim_step(x, u + w (c − u)); ``scale`` a float or (B, 1, 1, 1).
    With ``sigma`` > 0 it is the step's mean, without its noise σz."""
    clip = schedule.clip_sample_range if schedule.clip_sample else None
    guided = out_uncond + scale * (out_cond - out_uncond)
    return ddim_step(x, guided, a, a_next, schedule.prediction_type, sigma=sigma, clip=clip)
