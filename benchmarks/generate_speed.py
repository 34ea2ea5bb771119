"""Text-to-image wall time: ours vs diffusers' StableDiffusionPipeline on the same folder, one process.

    python benchmarks/generate_speed.py [--repeats 5] [--steps 50] [--models tiny sd15-small]
                                        [--device cuda --dtype fp16]

For each model, runs are interleaved (ours, diffusers, ours, …) with the same threads; the table shows
medians. The *limit* is steps × one batched (CFG, batch 2) UNet forward, timed on its own. Peak RSS is
measured in a fresh subprocess per implementation (load + one generation each), by polling
/proc/self/statm, as the absolute peak and as the rise over the RSS right after the imports. On CUDA the
memory columns are instead the peak GPU memory a generation allocates above the loaded weights.
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
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from latentdiff.models import DTYPES  # noqa: E402
from latentdiff.models.tokenizer import build_clip_tokenizer  # noqa: E402
from latentdiff.pipelines import Pipeline  # noqa: E402

PROMPT = "a red circle in the top left corner on a white background"
SD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                    clip_sample=False, set_alpha_to_one=False)

MODELS = {
    # name: (UNet block widths, layers per block, cross-attention dim, latent size, VAE widths)
    "tiny": ((32, 64), 1, 32, 8, (16, 16, 16, 16)),
    # Stable Diffusion 1.5's UNet layout (3 cross-attention down blocks + 1 plain, 2 layers each) at 1/5 width
    "sd15-small": ((64, 128, 256, 256), 2, 128, 32, (32, 64, 64, 64)),
}


def build(name: str, folder: Path) -> Path:
    widths, layers, cross, size, vae_widths = MODELS[name]
    torch.manual_seed(0)
    n = len(widths)
    unet = UNet2DConditionModel(
        sample_size=size, block_out_channels=widths, layers_per_block=layers, cross_attention_dim=cross,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1), attention_head_dim=8,
    )
    vae = AutoencoderKL(block_out_channels=vae_widths, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=16,
                        sample_size=size * 8)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=cross, intermediate_size=cross * 4,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=build_clip_tokenizer(77), unet=unet,
                                   scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / name, safe_serialization=True)
    return folder / name


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def load(kind: str, path: Path, device: str = "cpu", dtype: str = "fp32"):
    if kind == "ours":
        pipe = Pipeline.from_pretrained(path, device=device, dtype=dtype)
        return lambda steps: pipe(PROMPT, steps=steps, guidance=7.5, seed=0)
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, torch_dtype=DTYPES[dtype]).to(device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return lambda steps: pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5,
                              generator=torch.Generator().manual_seed(0)).images


def unet_limit(path: Path, steps: int, repeats: int, device: str = "cpu", dtype: str = "fp32") -> float:
    """steps × the median time of one batched CFG UNet forward (batch 2), plain diffusers UNet."""
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=DTYPES[dtype]).to(device).eval()
    cfg = unet.config
    x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, device=device, dtype=DTYPES[dtype])
    emb = torch.randn(2, 77, cfg.cross_attention_dim, device=device, dtype=DTYPES[dtype])
    times = []
    with torch.inference_mode():
        unet(x, 500, encoder_hidden_states=emb)
        for _ in range(repeats * 5):
            sync(device)
            start = time.perf_counter()
            unet(x, 500, encoder_hidden_states=emb)
            sync(device)
            times.append(time.perf_counter() - start)
    return steps * statistics.median(times)


def measure_rss(kind: str, path: str, steps: int) -> None:
    """In a fresh process: peak RSS (MiB) while loading and generating, and its rise over the post-import RSS."""
    from benchmarks.rss import PeakRSS

    with PeakRSS() as memory:
        load(kind, Path(path))(steps)
    print(json.dumps({"peak": memory.peak, "rise": memory.rise}))


def peak_rss(kind: str, path: Path, steps: int) -> dict:
    code = f"from benchmarks.generate_speed import measure_rss; measure_rss({kind!r}, {str(path)!r}, {steps})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def gpu_peak(fn, steps: int) -> dict:
    """Peak CUDA memory (MiB) allocated by one generation above what was allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(steps)
    torch.cuda.synchronize()
    rise = (torch.cuda.max_memory_allocated() - base) / 2**20
    return {"peak": rise, "rise": rise}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"threads {torch.get_num_threads()}"
    print(f"torch {torch.__version__}, {where}, {args.dtype}, {args.steps} DDIM steps, guidance 7.5, "
          f"median of {args.repeats} interleaved runs\n")
    print("| model | ours (s) | diffusers (s) | limit (s) | ours / diffusers | ours / limit "
          "| peak RSS ours / diffusers (MiB) | RSS rise over imports ours / diffusers (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = build(name, Path(tmp))
            runs = {k: load(k, path, args.device, args.dtype) for k in ("ours", "diffusers")}
            for fn in runs.values():
                fn(2)  # warm-up
            times = {k: [] for k in runs}
            for _ in range(args.repeats):
                for key, fn in runs.items():
                    sync(args.device)
                    start = time.perf_counter()
                    fn(args.steps)
                    sync(args.device)
                    times[key].append(time.perf_counter() - start)
            ours, theirs = statistics.median(times["ours"]), statistics.median(times["diffusers"])
            limit = unet_limit(path, args.steps, args.repeats, args.device, args.dtype)
            if args.device == "cuda":
                rss = {k: gpu_peak(fn, args.steps) for k, fn in runs.items()}
            else:
                rss = {k: peak_rss(k, path, args.steps) for k in runs}
            print(f"| {name} | {ours:.3f} | {theirs:.3f} | {limit:.3f} | {ours / theirs:.2f} | {ours / limit:.2f} "
                  f"| {rss['ours']['peak']:.0f} / {rss['diffusers']['peak']:.0f} "
                  f"| {rss['ours']['rise']:.0f} / {rss['diffusers']['rise']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
