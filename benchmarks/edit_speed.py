"""Inversion speed and reconstruction: our default null-text inversion vs the paper's reference settings.

    python benchmarks/edit_speed.py [--model weights/shapes] [--images 6] [--steps 50] [--guidance 7.5]
                                    [--candidate INNER_STEPS LR] [--device cuda]

Reference = the official prompt-to-prompt notebook's settings (10 Adam steps per timestep, lr 1e-2 with
its decay, early stop 1e-5, guidance 7.5, 50 steps). Ours = NTI_FAST. Both run on the same images, one
after the other per image, same threads; npi / direct / ddim / ddpm timed alongside. ``--candidate`` adds a row
for NTI_FAST with other inner steps and learning rate (for tuning the default). PSNR of the guided
reconstruction against the input, next to the VAE round trip (the ceiling).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latentdiff.edit.inversion import NTI_FAST, NTI_REFERENCE, invert, reconstruct  # noqa: E402
from latentdiff.edit.metrics import psnr  # noqa: E402
from latentdiff.models import DEFAULT_MODEL, load_components  # noqa: E402
from latentdiff.pipelines.image_input import encode_image  # noqa: E402
from latentdiff.shapes.evaluate_edit import _decode, shapes_examples  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--candidate", nargs=2, type=float, metavar=("INNER_STEPS", "LR"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="fp32 on either")
    args = parser.parse_args()
    c = load_components(args.model, device=args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    runs = {"nti reference": ("nti", NTI_REFERENCE), "nti (ours, default)": ("nti", NTI_FAST)}
    if args.candidate:
        inner, lr = int(args.candidate[0]), args.candidate[1]
        runs[f"nti candidate ({inner} inner, lr {lr:g})"] = ("nti", replace(NTI_FAST, inner_steps=inner, lr=lr))
    runs.update({"npi": ("npi", None), "direct": ("direct", None), "ddim": ("ddim", None), "ddpm": ("ddpm", None)})
    times = {k: [] for k in runs}
    quality = {k: [] for k in runs}
    ceiling = []
    for image, _, caption in shapes_examples(args.images):
        z = encode_image(c, image)
        ceiling.append(psnr(image, _decode(c, z)[0]))
        for name, (method, preset) in runs.items():
            sync()
            start = time.perf_counter()
            inv = invert(c, z, caption, method=method, steps=args.steps, guidance=args.guidance, preset=preset)
            sync()
            times[name].append(time.perf_counter() - start)
            quality[name].append(psnr(image, _decode(c, reconstruct(c, inv))[0]))
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"threads {torch.get_num_threads()}"
    print(f"torch {torch.__version__}, {where}, model {args.model}, {args.images} images, "
          f"{args.steps} steps, guidance {args.guidance}\n")
    ref = statistics.median(times["nti reference"])
    print("| method | inversion s/image (median) | speed-up vs reference | recon PSNR (dB, mean) |")
    print("|---|---:|---:|---:|")
    print(f"| VAE round trip (ceiling) | – | – | {statistics.mean(ceiling):.2f} |")
    for name in runs:
        t = statistics.median(times[name])
        print(f"| {name} | {t:.2f} | {ref / t:.1f}x | {statistics.mean(quality[name]):.2f} |")


if __name__ == "__main__":
    main()
