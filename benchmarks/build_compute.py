"""The compute a `latentdiff shapes build` recipe needs, and what it means on this machine.

    python benchmarks/build_compute.py [--configs configs/shapes configs/shapes-gpu] [--time 6]

For each training stage of each recipe: floating-point operations of one training step (forward + backward,
counted by `torch.utils.flop_counter` at the recipe's batch size), × the recipe's steps = the stage's total.
With `--time N`, N steps of each distinct stage network are timed here (after 2 warm-up steps), giving the
throughput this machine reaches on it and the hours the recipe would take here; the optimizer step is included
in the time, not in the count. The shapes world's images are 64×64 and its UNet works on 16×16 latents.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def vae_step(cfg: dict):
    from diffusers import AutoencoderKL

    from latentdiff.build.vae import _VAELoss, vae_config

    model = _VAELoss(AutoencoderKL(**vae_config(cfg["block_out_channels"], layers_per_block=cfg["layers_per_block"],
                                                norm_num_groups=cfg["norm_num_groups"], sample_size=64)))
    x = torch.randn(cfg["batch_size"], 3, 64, 64)

    def loss():
        rec, kl = model(x)
        return rec + cfg["kl_weight"] * kl
    return model, loss


def clip_step(cfg: dict):
    import open_clip

    from latentdiff.build.clip import clip_config, create_clip, tokenize_captions

    model = create_clip(clip_config(**{k: cfg[k] for k in ("embed_dim", "vision_width", "vision_layers", "text_width",
                                                            "text_layers", "heads", "context_length")}))
    x = torch.randn(cfg["batch_size"], 3, 64, 64)
    tokens = tokenize_captions(model, ["a large red circle in the top left corner on a white background"]
                               * cfg["batch_size"])
    contrastive = open_clip.ClipLoss()

    def loss():
        return contrastive(*model(x, tokens))
    return model, loss


def unet_step(arch: dict, batch_size: int, text_width: int, context: int):
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(**arch, cross_attention_dim=text_width)
    x = torch.randn(batch_size, arch["in_channels"], arch["sample_size"], arch["sample_size"])
    states = torch.randn(batch_size, context, text_width)
    t = torch.randint(0, 1000, (batch_size,))

    def loss():
        return model(x, t, states).sample.square().mean()
    return model, loss


def gflop_per_step(loss) -> float:
    with FlopCounterMode(display=False) as counter:
        loss().backward()
    return counter.get_total_flops() / 1e9


def seconds_per_step(model, loss, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def stages(folder: Path):
    """(name, steps, batch, network, builder) of every training stage of a recipe folder (with its inherited files);
    ``network`` tells stages with the same network and batch apart from others."""
    from latentdiff.build.recipe import Recipe

    recipe = Recipe(folder)
    vae, clip = recipe.read("vae.yaml"), recipe.read("clip.yaml")
    unet = recipe.read("unet.yaml")
    arch = yaml.safe_load((REPO / unet["model"]["unet_config"]).read_text())
    out = [("VAE", vae["steps"], vae["batch_size"], repr(vae), lambda: vae_step(vae)),
           ("CLIP", clip["steps"], clip["batch_size"], repr(clip), lambda: clip_step(clip))]
    for name, stage in [("UNet", unet)] + ([("UNet stage 4", recipe.read("unet-finetune.yaml"))]
                                           if recipe.path("unet-finetune.yaml") else []):
        batch = stage["train"]["batch_size"]
        out.append((name, stage["train"]["max_steps"], batch, repr((arch, batch, clip["text_width"])),
                    lambda b=batch: unet_step(arch, b, clip["text_width"], clip["context_length"])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=Path, nargs="+", default=[REPO / "configs/shapes", REPO / "configs/shapes-gpu"])
    parser.add_argument("--time", type=int, default=0, help="time this many steps of each stage network (0: don't)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"threads: {torch.get_num_threads()}")
    print("| recipe | stage | steps × batch | GFLOP/step | total TFLOP | s/step here | GFLOP/s here | hours here |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    timed: dict[tuple, tuple[float, float]] = {}
    for folder in args.configs:
        total, hours = 0.0, 0.0
        for name, steps, batch, key, build in stages(folder):
            if key not in timed:
                model, loss = build()
                flops = gflop_per_step(loss)
                secs = seconds_per_step(model, loss, args.time) if args.time else float("nan")
                timed[key] = (flops, secs)
            flops, secs = timed[key]
            total += flops * steps / 1e3
            hours += secs * steps / 3600
            print(f"| {folder.name} | {name} | {steps} × {batch} | {flops:.1f} | {flops * steps / 1e3:.0f} | "
                  f"{secs:.2f} | {flops / secs:.0f} | {secs * steps / 3600:.2f} |")
        print(f"| {folder.name} | **all training** | | | **{total:.0f}** | | | **{hours:.1f}** |")


if __name__ == "__main__":
    main()
