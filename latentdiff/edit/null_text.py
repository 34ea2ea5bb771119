"""Null-text optimization (Mokady et al. 2022, Algorithm 1): per sampling step, Adam fits the unconditional
embedding ∅_i so that the guided DDIM step from the current latent lands on the pivot's next latent."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models import Components
from .denoise import float32_model, guided_step, step_plan


@dataclass(frozen=True)
class NTISettings:
    """Null-text optimization. At step i (0 = most noisy) Adam runs with lr·(1 − i·lr_decay) for at most
    ``inner_steps`` iterations and stops once the latent MSE < epsilon + i·epsilon_growth — the schedule of
    the official prompt-to-prompt ``null_text_w_ptp`` notebook, which evaluates the loss, updates ∅, then
    tests the loss, and advances z̄ with one more UNet pass. With ``stop_before_update`` the loss is tested
    *before* the update, and the last evaluation is never followed by an update: ``inner_steps`` UNet
    passes with grad make at most ``inner_steps − 1`` updates, and the ∅ kept is the best one evaluated,
    whose output advances z̄ (no backward and no UNet pass spent on an update that is not evaluated)."""

    inner_steps: int = 10
    lr: float = 1e-2
    lr_decay: float = 1e-2
    epsilon: float = 1e-5
    epsilon_growth: float = 2e-5
    stop_before_update: bool = False

    def check(self, steps: int) -> None:
        if self.inner_steps < 0 or self.lr <= 0:
            raise ValueError(f"null-text settings inner_steps={self.inner_steps}, lr={self.lr} must be >= 0 and > 0")
        if self.inner_steps and self.lr_decay > 0 and 1 - (steps - 1) * self.lr_decay <= 0:
            raise ValueError(f"nti with steps={steps}: the learning rate lr·(1 − i·{self.lr_decay:g}) reaches 0 "
                             f"before the last step; use at most {math.ceil(1 / self.lr_decay)} steps")


NTI_REFERENCE = NTISettings()  # the paper's / official notebook's settings
# Our default: per step at most 3 Adam updates at 10× the paper's rate (its decay and early stop), the best ∅
# evaluated kept: 4 UNet passes with grad per step instead of up to 10, on the fixed-point pivot. 4 passes at
# lr 0.1 is the cheapest setting tried that keeps nti's reconstruction within about 1 dB of the VAE round trip on
# the default model (30 steps, guidance 7.5; fewer passes fall further short at every rate tried), and at 50
# steps it is 3.0–3.2× faster than NTI_REFERENCE and 0.51 dB better (benchmarks/README.md; the presets tried
# are in benchmarks/HISTORY.md).
NTI_FAST = NTISettings(inner_steps=4, lr=0.1, stop_before_update=True)


def null_text_optimization(components: Components, pivot: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                           steps: int, guidance: float, settings: NTISettings = NTI_FAST,
                           progress: bool = False) -> tuple[torch.Tensor, int]:
    """Per-step unconditional embeddings (N, L, D) fitted along the pivot (Mokady et al. 2022, Algorithm 1),
    and the number of inner iterations run. ``cond``/``null`` are (1, L, D) float32."""
    model, schedule, N = float32_model(components), components.schedule, pivot.shape[0] - 1
    z, phi, fitted, iterations = pivot[-1:], null.clone(), [], 0
    for i, t, a, a_next in tqdm(step_plan(components, steps), disable=not progress, desc="null-text optimization"):
        target = pivot[N - i - 1 : N - i]  # z*_{t-1}
        phi = phi.detach().clone().requires_grad_(True)  # a new leaf: Adam updates it in place
        out_cond = None  # 1. independent of ∅: once per step, in one batch with the first evaluation of ∅
        optimizer = torch.optim.Adam([phi], lr=settings.lr * (1.0 - i * settings.lr_decay))
        threshold = settings.epsilon + i * settings.epsilon_growth
        best = None  # (loss, ∅, output) of the best ∅ evaluated (stop_before_update)
        for j in range(settings.inner_steps):  # 2. the unconditional branch, with grad wrt ∅
            if j == 0:
                out_cond, out = model(torch.cat([z, z]), t, torch.cat([cond, phi])).chunk(2)
                out_cond = out_cond.detach()
            else:
                out = model(z, t, phi)
            loss = F.mse_loss(guided_step(schedule, z, out, out_cond, guidance, a, a_next), target)
            iterations += 1
            if settings.stop_before_update:
                if best is None or loss.item() < best[0]:
                    best = (loss.item(), phi.detach().clone(), out.detach())
                if j == settings.inner_steps - 1 or best[0] < threshold:
                    break
            (phi.grad,) = torch.autograd.grad(loss, [phi])  # no grads accumulate in the (frozen) UNet
            optimizer.step()
            if not settings.stop_before_update and loss.item() < threshold:
                break
        phi, out_uncond = (phi.detach(), None) if best is None else best[1:]
        with torch.no_grad():  # 3. advance z̄ with the fitted ∅_i
            out_cond = model(z, t, cond) if out_cond is None else out_cond  # inner_steps = 0
            out_uncond = model(z, t, phi) if out_uncond is None else out_uncond
            z = guided_step(schedule, z, out_uncond, out_cond, guidance, a, a_next)
        fitted.append(phi)
    return torch.cat(fitted), iterations
