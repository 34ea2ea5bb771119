"""Training throughput: ours with the cache, ours without it, a diffusers-style reference loop, and the limit.

    python benchmarks/train_speed.py [--steps 20] [--batch-size 4] [--resolution 128]

Same UNet (Stable Diffusion 1.5's layout at 1/5 width), same frozen VAE and text encoder, same data and
batch size, same threads. Ours is timed as the marginal cost of a step of `latentdiff.train.train`
((time of a long run − time of a short run) / extra steps, so start-up and cache building are excluded;
the cache is built once before). Every measurement runs in a fresh process. The reference loop encodes every batch through the VAE and the text
encoder, as diffusers' `train_text_to_image.py` does. The limit is the UNet forward + backward +
AdamW step alone on tensors already in memory. Peak RSS of each mode is measured in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build(folder: Path, resolution: int) -> tuple[Path, Path]:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentdiff.models.tokenizer import build_clip_tokenizer
    from latentdiff.shapes import render_dataset

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=resolution // 8, block_out_channels=(64, 128, 256, 256), layers_per_block=2,
        cross_attention_dim=128, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(block_out_channels=(64, 128, 256, 256), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        norm_num_groups=32, sample_size=resolution)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=49407))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=build_clip_tokenizer(77), unet=unet,
                                   scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                           beta_end=0.012),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "model", safe_serialization=True)
    render_dataset(folder / "data", 64, seed=0)
    return folder / "model", folder / "data"


def run_ours(model: Path, data: Path, out: Path, steps: int, batch: int, resolution: int, cache: bool) -> float:
    from latentdiff.training.config import load_config
    from latentdiff.training.train import train

    cfg = load_config(None, [f"model.pretrained={model}", f"data.root={data}", f"data.resolution={resolution}",
                             f"data.cache={str(cache).lower()}", f"data.cache_dir={out.parent / 'cache'}",
                             f"train.output_dir={out}", f"train.batch_size={batch}", f"train.max_steps={steps}",
                             f"train.checkpoint_every={10**6}", "train.progress=false", "train.ema_decay=null"])
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def unet_update(unet, opt, x_t, t, emb, target) -> None:
    """UNet forward + backward + clipping + AdamW step: the part every mode shares."""
    F.mse_loss(unet(x_t, t, emb).sample, target).backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    opt.zero_grad()


def reference_loop(model: Path, data: Path, steps: int, batch: int, resolution: int) -> list[float]:
    """diffusers' example: every step loads images, VAE-encodes, tokenizes and text-encodes, then trains."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from latentdiff.training.data import Transform, load_image, scan_dataset

    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").requires_grad_(False)
    text = CLIPTextModel.from_pretrained(model, subfolder="text_encoder").requires_grad_(False)
    tok = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").train()
    sched = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    items, tf = scan_dataset(data).items, Transform(resolution)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        chosen = [items[(step * batch + i) % len(items)] for i in range(batch)]
        pixels = torch.stack([tf(load_image(it.path)) for it in chosen])
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            ids = tok([it.captions[0] for it in chosen], padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
            emb = text(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        unet_update(unet, opt, sched.add_noise(latents, noise, t), t, emb, noise)
        times.append(time.perf_counter() - start)
    return times


def limit_loop(model: Path, steps: int, batch: int, resolution: int) -> list[float]:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch, 4, resolution // 8, resolution // 8)
    emb = torch.randn(batch, 77, unet.config.cross_attention_dim)
    t = torch.randint(0, 1000, (batch,))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        unet_update(unet, opt, x, t, emb, x)
        times.append(time.perf_counter() - start)
    return times


def child(mode: str, model: str, data: str, out: str, steps: int, batch: int, resolution: int) -> None:
    """One measurement in a fresh process (a process that already trained runs later loops slower):
    prints {"seconds": per-step (loops) or whole-run (ours) time, "rss_mib", "rise_mib"}."""
    from benchmarks.rss import PeakRSS

    model, data, out = Path(model), Path(data), Path(out)
    with PeakRSS() as memory:
        if mode.startswith("ours"):
            seconds = run_ours(model, data, out, steps, batch, resolution, cache=mode == "ours-cache")
        else:
            loop = reference_loop(model, data, steps + 2, batch, resolution) if mode == "reference" else \
                limit_loop(model, steps + 2, batch, resolution)
            seconds = statistics.median(loop[2:])
    print(json.dumps({"seconds": seconds, "rss_mib": memory.peak, "rise_mib": memory.rise}))


def measure(mode: str, model: Path, data: Path, out: Path, steps: int, batch: int, resolution: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train_speed", "--child", mode, str(model), str(data), str(out),
           str(steps), str(batch), str(resolution)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, model, data, out, steps, batch, res = args.child
        return child(mode, model, data, out, int(steps), int(batch), int(res))
    b, n, r = args.batch_size, args.steps, args.resolution
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {b}, {r}px, {n} timed steps, "
          "each measurement in a fresh process\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, data = build(tmp, r)
        measure("ours-cache", model, data, tmp / "warm", 1, b, r)  # builds the cache once
        short = 3
        per_step, rss = {}, {}
        for mode in ("ours-cache", "ours-nocache"):
            a = measure(mode, model, data, tmp / f"{mode}-s", short, b, r)
            z = measure(mode, model, data, tmp / f"{mode}-l", short + n, b, r)
            per_step[mode], rss[mode] = (z["seconds"] - a["seconds"]) / n, z
        for mode in ("reference", "limit"):
            rss[mode] = measure(mode, model, data, tmp / mode, n, b, r)
            per_step[mode] = rss[mode]["seconds"]
    print("| mode | s/step | samples/s | speed vs reference | time vs limit | peak RSS (MiB) | RSS rise (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, s in per_step.items():
        print(f"| {mode} | {s:.3f} | {b / s:.1f} | {per_step['reference'] / s:.2f}x | "
              f"{s / per_step['limit']:.2f}x | {rss[mode]['rss_mib']:.0f} | {rss[mode]['rise_mib']:.0f} |")


if __name__ == "__main__":
    main()
