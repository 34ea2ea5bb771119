"""Is bf16 autocast worth it on this CPU? One training step of the default model's UNet, fp32 vs bf16 autocast.

    python benchmarks/mixed_precision_cpu.py [--steps 6] [--batch-size 32]

The UNet of weights/shapes (its config, fresh weights), batch 32 of 16×16 latents, forward + backward + AdamW,
alternating fp32 and bf16 steps after one warm-up each; medians. `train.mixed_precision: auto` picks bf16 on a
CPU only where /proc/cpuinfo lists native bf16 (`latentdiff.models.cpu_has_native_bf16`); this shows why.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latentdiff.models import DEFAULT_MODEL, cpu_has_native_bf16  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(DEFAULT_MODEL / "unet")).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    c = unet.config
    x = torch.randn(args.batch_size, c.in_channels, c.sample_size, c.sample_size)
    emb = torch.randn(args.batch_size, 77, c.cross_attention_dim)
    t = torch.randint(0, 1000, (args.batch_size,))

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = F.mse_loss(unet(x, t, encoder_hidden_states=emb).sample.float(), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(False), step(True)  # warm-up
    times = {False: [], True: []}
    for _ in range(args.steps):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"native bf16 in /proc/cpuinfo: {cpu_has_native_bf16()}, batch {args.batch_size}, median of {args.steps}\n")
    print("| autocast | s/step | vs fp32 |\n|---|---:|---:|")
    print(f"| none (fp32) | {fp32:.3f} | 1.00x |\n| bf16 | {bf16:.3f} | {bf16 / fp32:.2f}x |")


if __name__ == "__main__":
    main()
