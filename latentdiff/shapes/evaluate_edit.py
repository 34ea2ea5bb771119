"""`latentdiff eval-edit`: reconstruction quality and speed of each inversion method, and word-swap edits.

On shapes-world images with known attributes: for each method, the inversion time, the PSNR and SSIM of
the reconstruction (guided, at the inversion's guidance) against the input, next to the VAE round trip
(the ceiling of any latent inversion); then a color word swap ("a red circle …" → "a blue circle …")
scored by the analyzer: is the target color read, and does the object mask keep IoU ≥ 0.8.

The word swap has a ceiling too: the renderer draws the true edit (the same object in the target
color), and its VAE round trip is what a perfect edit of the latents would decode to. The "vae" row
reports that round trip's color reading and mask IoU, next to the source round trip's PSNR and SSIM.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..edit.attention import AttentionController
from ..edit.inversion import NTI_FAST, NTISettings, invert, sample_edit
from ..edit.metrics import psnr, ssim
from ..models import Components, decode_latents, to_uint8
from ..pipelines.image_input import encode_image

IOU_TARGET = 0.8


def _decode(components: Components, latents: torch.Tensor) -> list[Image.Image]:
    with torch.no_grad():
        return [Image.fromarray(a) for a in to_uint8(decode_latents(components, latents))]


EXAMPLE_SEED = 77


def shapes_examples(n: int, seed: int = EXAMPLE_SEED) -> list[tuple[Image.Image, dict, str]]:
    """(image, attributes, canonical caption) of seen-split shapes images; example i is ``make_example(seed, i)``."""
    from .dataset import examples
    from .evaluate import canonical_caption

    out = []
    for image, row in examples(n, seed, "train"):
        attrs = {k: row[k] for k in ("shape", "color", "size", "position", "background")}
        out.append((image, attrs, canonical_caption(attrs)))
    return out


def true_edit(index: int, color: str, seed: int = EXAMPLE_SEED) -> Image.Image:
    """Example ``index`` of :func:`shapes_examples` drawn with the object in ``color``: the perfect word swap."""
    from .dataset import make_example

    return make_example(seed, index, "train", color=color)[0]


def swap_color(attrs: dict, rng: np.random.Generator) -> str:
    """Another object color that is not the background's and not a held-out pair with this shape."""
    from .world import COLORS, HELD_OUT

    options = [c for c in COLORS if c not in (attrs["color"], attrs["background"])
               and (attrs["shape"], c) not in HELD_OUT]
    return options[rng.integers(len(options))]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def evaluate_editing(components: Components, n_images: int = 8,
                     methods: Sequence[str] = ("ddim", "npi", "direct", "nti", "ddpm"),
                     steps: int | None = None, guidance: float | None = None, preset: NTISettings = NTI_FAST,
                     fixed_point_iters: int | None = None,
                     cross_replace: float = 0.8, self_replace: float = 0.4, seed: int = 0,
                     source_guidance: float | None = None, out_dir: Path | None = None,
                     progress: bool = False) -> dict:
    """{'vae': {...}, method: {psnr, ssim, seconds, color_ok, iou_ok}} averaged over the images.

    ``guidance`` (default: the model's) is the scale each method inverts for and edits at, except ``ddpm``'s
    noise, solved at ``source_guidance`` (default 1); ``seed`` draws ddpm's noisy latents."""
    from .analyze import analyze, object_mask

    rng = np.random.default_rng(0)
    rows = {m: {"psnr": [], "ssim": [], "seconds": [], "color_ok": [], "iou": []} for m in methods}
    vae_rows = {"psnr": [], "ssim": [], "color_ok": [], "iou": []}  # the round trips: what no edit can beat
    panels = []
    for index, (image, attrs, caption) in enumerate(shapes_examples(n_images)):
        latents = encode_image(components, image)
        roundtrip = _decode(components, latents)[0]
        vae_rows["psnr"].append(psnr(image, roundtrip))
        vae_rows["ssim"].append(ssim(image, roundtrip))
        target_color = swap_color(attrs, rng)
        target = caption.replace(f" {attrs['color']} ", f" {target_color} ", 1)
        source_mask = object_mask(image)
        truth = _decode(components, encode_image(components, true_edit(index, target_color)))[0]
        vae_rows["color_ok"].append(analyze(truth)["color"] == target_color)
        vae_rows["iou"].append(iou(source_mask, object_mask(truth)))
        row_panels = [image, roundtrip, truth]
        for method in methods:
            start = time.perf_counter()
            ddpm = method == "ddpm"  # its noise is solved at its own source guidance; ``guidance`` is the edit's
            inv = invert(components, latents, caption, method=method, steps=steps,
                         guidance=source_guidance if ddpm else guidance,
                         preset=preset, fixed_point_iters=fixed_point_iters, seed=seed, progress=progress)
            rows[method]["seconds"].append(time.perf_counter() - start)
            controller = AttentionController(components.tokenizer, caption, target, inv.steps,
                                             cross_replace=cross_replace, self_replace=self_replace)
            with torch.no_grad(), controller.installed(components.unet):
                # the source branch is the reconstruction: the controller only ever changes the edited branch
                recon, edited = _decode(components, sample_edit(components, inv, target, controller=controller,
                                                                guidance=guidance if ddpm else None))
            rows[method]["psnr"].append(psnr(image, recon))
            rows[method]["ssim"].append(ssim(image, recon))
            rows[method]["color_ok"].append(analyze(edited)["color"] == target_color)
            rows[method]["iou"].append(iou(source_mask, object_mask(edited)))
            row_panels += [recon, edited]
        panels.append(row_panels)
    summary = {}
    for m, r in {"vae": vae_rows, **rows}.items():
        summary[m] = {"psnr": float(np.mean(r["psnr"])), "ssim": float(np.mean(r["ssim"])),
                      "color_ok": float(np.mean(r["color_ok"])),
                      "iou_ok": float(np.mean([v >= IOU_TARGET for v in r["iou"]])),
                      "both_ok": float(np.mean([c and v >= IOU_TARGET for c, v in zip(r["color_ok"], r["iou"])])),
                      "iou_mean": float(np.mean(r["iou"]))}
        if m != "vae":
            summary[m]["seconds"] = float(np.median(r["seconds"]))
    if out_dir is not None:
        from ..pipelines.images import grid, save_png

        out_dir.mkdir(parents=True, exist_ok=True)
        save_png(grid([p for row in panels for p in row], columns=len(panels[0])), out_dir / "edits.png")
        (out_dir / "edit_metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def table(summary: dict) -> str:
    """Markdown; the VAE row's word-swap columns are those of the true edit's round trip (the ceiling)."""
    lines = ["| method | recon PSNR (dB) | recon SSIM | inversion s/image | word swap: target color read | "
             "mask IoU ≥ 0.8 | both | mean IoU |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, r in summary.items():
        name, seconds = ("VAE round trip (ceiling)", "–") if m == "vae" else (m, f"{r['seconds']:.2f}")
        lines.append(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {seconds} | {100 * r['color_ok']:.0f}% | "
                     f"{100 * r['iou_ok']:.0f}% | {100 * r['both_ok']:.0f}% | {r['iou_mean']:.2f} |")
    return "\n".join(lines)
