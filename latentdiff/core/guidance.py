"""Classifier-free guidance as a wrapper around a conditional model (Ho & Salimans 2022)."""

from __future__ import annotations

from typing import Any, Callable

import torch

# model(x, t, cond) -> output; the denoiser the samplers see is (x, t) -> output.
ConditionalModel = Callable[[torch.Tensor, int, Any], torch.Tensor]


def check_rescale(rescale: float, named: str = "guidance_rescale=") -> None:
    """ValueError unless the guidance rescale φ is in [0, 1]; ``named`` is how the message names it (a setting
    ``"guidance_rescale="`` or a flag ``"--guidance-rescale "``)."""
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"{named}{rescale!r} must be in [0, 1]")


def rescale_guidance(guided: torch.Tensor, cond_output: torch.Tensor, rescale: float) -> torch.Tensor:
    """Blend the guided output with itself rescaled to the conditional output's per-sample std.

    Lin et al. 2023, §3.4 (eq. 15–16): fixes over-exposure of large guidance with zero-terminal-SNR.
    """
    dims = list(range(1, guided.ndim))
    std_cond = cond_output.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    return rescale * (guided * (std_cond / std_guided)) + (1 - rescale) * guided


class CFGDenoiser:
    """``denoiser(x, t)`` = uncond + w·(cond − uncond), from one batched forward of [uncond, cond].

    With w = 1 the model is called once on the conditional batch alone (no guidance work at all).
    ``cond`` and ``uncond`` are batches the model accepts as its third argument, e.g. text
    embeddings (B, L, D); they are concatenated once, here, not at every step.
    """

    def __init__(self, model: ConditionalModel, cond, uncond=None, scale: float = 1.0, rescale: float = 0.0):
        if scale != 1.0 and uncond is None:
            raise ValueError(f"guidance scale={scale} needs an unconditional input (uncond)")
        check_rescale(rescale)
        self.model, self.cond, self.scale, self.rescale = model, cond, float(scale), float(rescale)
        self.both = None if scale == 1.0 else torch.cat([uncond, cond])

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        if self.both is None:
            return self.model(x, t, self.cond)
        out_uncond, out_cond = self.model(torch.cat([x, x]), t, self.both).chunk(2)
        guided = out_uncond + self.scale * (out_cond - out_uncond)
        if self.rescale > 0:
            guided = rescale_guidance(guided, out_cond, self.rescale)
        return guided


class UNetModel:
    """Adapts a diffusers ``UNet2DConditionModel`` to ``model(x, t, text_embeddings) -> prediction``."""

    def __init__(self, unet, **unet_kwargs):
        self.unet, self.unet_kwargs = unet, unet_kwargs

    def __call__(self, x: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond, return_dict=False, **self.unet_kwargs)[0]
