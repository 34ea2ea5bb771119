"""Stage 1: a small diffusers ``AutoencoderKL`` trained on uint8 images (L1 reconstruction + a small KL term).

Loss per image, as in LDM's autoencoder (Rombach et al. 2022, without the perceptual and GAN terms), divided by
the number of pixel values D = 3·H·W so that the logged reconstruction term is the mean L1 on [-1, 1] pixels:

    loss = ( Σ_pixels |x − D(z)| + kl_weight · KL(q(z|x) ‖ N(0, I)) ) / D,    z ~ q(z|x)

``kl_weight`` therefore has LDM's meaning (1e-6 in its f4/f8 KL autoencoders).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..models.device import make_accelerator
from ..models.pixels import MAX_LEVEL, as_uint8_images, from_pixels, to_pixels
from .lr import warmup_cosine

log = logging.getLogger(__name__)


def vae_config(
    block_out_channels: Sequence[int] = (32, 64, 64),
    *,
    latent_channels: int = 4,
    layers_per_block: int = 1,
    norm_num_groups: int = 16,
    sample_size: int = 64,
) -> dict:
    """AutoencoderKL arguments; downsampling factor is 2^(len(block_out_channels) − 1), 4 for three levels."""
    if any(c % norm_num_groups for c in block_out_channels):
        raise ValueError(f"norm_num_groups={norm_num_groups} must divide every width in {tuple(block_out_channels)}")
    levels = len(block_out_channels)
    return dict(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=norm_num_groups, sample_size=sample_size, scaling_factor=1.0,
    )


class _VAELoss(torch.nn.Module):
    """encode → sample → decode → (mean L1, KL per pixel value); one module so that DDP sees one forward."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None):
        posterior = self.vae.encode(x).latent_dist  # mean, std: (B, 4, H/f, W/f)
        recon = self.vae.decode(posterior.sample(generator)).sample  # (B, 3, H, W)
        values = x[0].numel()
        return (recon.float() - x).abs().mean(), posterior.kl().float().mean() / values


def train_vae(
    images,
    *,
    config: Optional[dict] = None,
    steps: int = 20_000,
    batch_size: int = 32,
    lr: float = 5e-4,
    kl_weight: float = 1e-6,
    warmup: int = 200,
    hflip: bool = True,
    seed: int = 0,
    device: str = "auto",
    mixed_precision: str = "auto",
    log_every: int = 500,
    progress: bool = False,
    callback: Optional[Callable[[dict], None]] = None,
):
    """Train an AutoencoderKL on uint8 images (N, H, W, 3); returns it in eval mode, fp32, on the training device.

    AdamW with linear warmup and cosine decay to 10 % of ``lr``; gradients clipped to norm 1. Horizontal flips
    (``hflip``) are an augmentation the autoencoder is indifferent to. ``callback`` gets
    ``{"step", "loss", "rec", "kl", "lr"}`` after every step. Same seed, same device → same weights.
    """
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL

    images = as_uint8_images(images)
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be ≥ 0 and batch_size ≥ 1, got steps={steps}, batch_size={batch_size}")
    accelerator = make_accelerator(device, mixed_precision)
    set_seed(seed)
    vae = AutoencoderKL(**(config or vae_config(sample_size=images.shape[1])))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    model, optimizer = accelerator.prepare(_VAELoss(vae), optimizer)
    data = images.to(accelerator.device)
    # one generator for batches (CPU, device-independent) and one for posterior samples, per process
    batches = torch.Generator().manual_seed(seed + accelerator.process_index)
    noise = torch.Generator(accelerator.device).manual_seed(seed + 1000 + accelerator.process_index)

    model.train()
    for step in tqdm(range(steps), disable=not progress or not accelerator.is_local_main_process, desc="vae"):
        # 1. a random batch of pixels in [-1, 1], randomly mirrored
        idx = torch.randint(len(data), (batch_size,), generator=batches)
        flip = torch.rand(batch_size, generator=batches) < 0.5 if hflip else torch.zeros(batch_size, dtype=torch.bool)
        x = to_pixels(data[idx.to(data.device)])  # (B, 3, H, W)
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        # 2. loss and step
        factor = warmup_cosine(step, steps, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        with accelerator.autocast():
            rec, kl = model(x, generator=noise)
        loss = rec + kl_weight * kl
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logs = {"step": step + 1, "loss": loss.item(), "rec": rec.item(), "kl": kl.item(), "lr": lr * factor}
        if callback is not None:
            callback(logs)
        if log_every and (step + 1) % log_every == 0:
            log.info("vae step %d/%d: loss %.5f  L1 %.5f  KL/value %.3f", step + 1, steps, logs["loss"],
                     logs["rec"], logs["kl"])
    vae = accelerator.unwrap_model(model).vae
    accelerator.free_memory()
    return vae.float().eval()


@torch.no_grad()
def _latents(vae, images: torch.Tensor, *, seed: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(posterior samples, posterior means) of uint8 images, each (N, 4, H/f, W/f)."""
    generator = torch.Generator(vae.device).manual_seed(seed)
    samples, means = [], []
    for start in range(0, len(images), batch_size):
        x = to_pixels(images[start : start + batch_size].to(vae.device)).to(vae.dtype)
        dist = vae.encode(x).latent_dist
        samples.append(dist.sample(generator))
        means.append(dist.mean)
    return torch.cat(samples), torch.cat(means)


def latent_scaling_factor(vae, images, *, sample: bool = True, seed: int = 0, batch_size: int = 64) -> float:
    """1 / std of the latents of held-out images, stored as ``vae.config.scaling_factor``; returned too.

    As in LDM (``scale_by_std``), the std is over all latent values of posterior *samples* z ~ q(z|x), the
    latents that diffusion training encodes; ``sample=False`` uses the posterior means instead. Warns when the
    two differ by more than 10 %: the posterior noise is then a large part of the latents (VAE undertrained).
    """
    vae.eval()
    samples, means = _latents(vae, as_uint8_images(images), seed=seed, batch_size=batch_size)
    std_samples, std_means = samples.double().flatten().std().item(), means.double().flatten().std().item()
    if std_samples > 1.1 * std_means:
        log.warning("VAE latents: posterior samples have std %.3g but their means %.3g; the posterior noise is "
                    "large, so the VAE looks undertrained (train longer or raise kl_weight)", std_samples, std_means)
    factor = 1.0 / (std_samples if sample else std_means)
    vae.register_to_config(scaling_factor=factor)
    return factor


@torch.no_grad()
def reconstruct(vae, images, *, batch_size: int = 64) -> torch.Tensor:
    """uint8 images (N, H, W, 3) → their uint8 reconstructions through the posterior mean, on the CPU."""
    vae.eval()
    images = as_uint8_images(images)
    out = []
    for start in range(0, len(images), batch_size):
        x = to_pixels(images[start : start + batch_size].to(vae.device)).to(vae.dtype)
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.float()  # (B, 3, H, W) in ≈[-1, 1]
        out.append(from_pixels(y).cpu())
    return torch.cat(out)


def reconstruction_psnr(vae, images, *, batch_size: int = 64) -> float:
    """PSNR in dB, 10·log10(255² / MSE), of uint8 reconstructions; MSE pooled over all images and pixels.

    Pooling the MSE first is stricter than averaging per-image PSNRs (it is never higher, by Jensen).
    """
    images = as_uint8_images(images)
    mse = (reconstruct(vae, images, batch_size=batch_size).double() - images.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(float(MAX_LEVEL) ** 2 / mse)).item()
