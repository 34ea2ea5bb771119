"""img2img recolouring and inpainting on the default model (shapes world), scored by the analyzer.

    python benchmarks/image_to_image.py [--images 32] [--strengths 0.4 0.5 0.6 0.7 0.8] [--seed 0] [--example-seed 77]

Recolour: each seen-split shapes image (eval-edit's examples) reworked with its canonical caption in another colour
at each strength; scored: the analyzer reads the target colour, and the object's mask keeps IoU >= 0.8 with the
input's. Inpaint: a mask over the object's bounding box (4 px margin), a prompt naming another shape and colour at
the same size and position; scored: the analyzer reads the new shape and colour; a trace of the old object (more
than 10 % of its pixels still nearest its old colour and not the new one); outside the mask, the composited output
equals the input, and without the composite the PSNR there next to the VAE round trip's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latentdiff.edit.metrics import psnr  # noqa: E402
from latentdiff.models import DEFAULT_MODEL, vae_round_trip  # noqa: E402
from latentdiff.pipelines import Pipeline  # noqa: E402
from latentdiff.shapes.analyze import analyze, object_mask  # noqa: E402
from latentdiff.shapes.evaluate import canonical_caption  # noqa: E402
from latentdiff.shapes.evaluate_edit import EXAMPLE_SEED, iou, shapes_examples, swap_color  # noqa: E402
from latentdiff.shapes.world import BACKGROUNDS, COLORS, HELD_OUT, SHAPES  # noqa: E402

MARGIN = 4  # pixels around the object's bounding box
TRACE = 0.10  # fraction of the old object's pixels still nearest its old colour


def box_mask(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.where(mask)
    out = np.zeros_like(mask)
    out[max(0, rows.min() - MARGIN): rows.max() + MARGIN + 1, max(0, cols.min() - MARGIN): cols.max() + MARGIN + 1] = 1
    return out


def nearest_color(pixels: np.ndarray) -> np.ndarray:
    palette = {**COLORS, **BACKGROUNDS}
    names = list(palette)
    colors = np.asarray([palette[n] for n in names], dtype=np.float64)
    index = np.argmin(((pixels[:, None, :].astype(np.float64) - colors[None]) ** 2).sum(-1), axis=1)
    return np.asarray(names)[index]


def other_object(attrs: dict, rng: np.random.Generator) -> dict:
    shapes = [s for s in SHAPES if s != attrs["shape"]]
    shape = shapes[rng.integers(len(shapes))]
    colors = [c for c in COLORS if c not in (attrs["color"], attrs["background"]) and (shape, c) not in HELD_OUT]
    return dict(attrs, shape=shape, color=colors[rng.integers(len(colors))])


def recolour(pipe, examples, strengths, seed, **settings):
    rng = np.random.default_rng(0)
    rows = {s: {"color_ok": [], "iou_ok": [], "iou_ok_large": [], "iou_ok_small": []} for s in strengths}
    for i, (image, attrs, caption) in enumerate(examples):
        target_color = swap_color(attrs, rng)
        target = caption.replace(f" {attrs['color']} ", f" {target_color} ", 1)
        source_mask = object_mask(image)
        for s in strengths:
            out = pipe.img2img(target, image, strength=s, seed=seed + i, **settings)[0].image
            rows[s]["color_ok"].append(analyze(out)["color"] == target_color)
            kept = iou(source_mask, object_mask(out)) >= 0.8
            rows[s]["iou_ok"].append(kept)
            rows[s][f"iou_ok_{attrs['size']}"].append(kept)
    return {s: {k: float(np.mean(v)) for k, v in r.items()} for s, r in rows.items()}


def inpaint(pipe, examples, seed, **settings):
    rng = np.random.default_rng(1)
    rows = {"shape_ok": [], "color_ok": [], "both_ok": [], "trace": [], "outside_exact": [], "outside_psnr": [],
            "vae_outside_psnr": []}
    for i, (image, attrs, caption) in enumerate(examples):
        new = other_object(attrs, rng)
        old = object_mask(image)
        mask = box_mask(old)
        mask_image = Image.fromarray((mask * 255).astype(np.uint8))
        out = pipe.inpaint(canonical_caption(new), image, mask_image, seed=seed + i, **settings)[0].image
        read = analyze(out)
        rows["shape_ok"].append(read["shape"] == new["shape"])
        rows["color_ok"].append(read["color"] == new["color"])
        rows["both_ok"].append(read["shape"] == new["shape"] and read["color"] == new["color"])
        names = nearest_color(np.asarray(out)[old])
        rows["trace"].append(float(np.mean(names == attrs["color"])) > TRACE)
        outside = mask == 0
        rows["outside_exact"].append(bool(np.array_equal(np.asarray(out)[outside], np.asarray(image)[outside])))
        raw = pipe.inpaint(canonical_caption(new), image, mask_image, seed=seed + i, composite=False, **settings)[0].image
        (roundtrip,) = vae_round_trip(pipe.components, [image])
        rows["outside_psnr"].append(psnr(_masked(image, outside), _masked(raw, outside)))
        rows["vae_outside_psnr"].append(psnr(_masked(image, outside), _masked(roundtrip, outside)))
    return {k: float(np.mean(v)) for k, v in rows.items()}


def _masked(image, keep: np.ndarray) -> Image.Image:
    """The image with the pixels outside ``keep`` set to black, so that PSNR compares only ``keep``."""
    array = np.asarray(image.convert("RGB")).copy()
    array[~keep] = 0
    return Image.fromarray(array)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--example-seed", type=int, default=EXAMPLE_SEED)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--sampler", help="default: the model's")
    parser.add_argument("--eta", type=float, help="DDIM η (default: the model's)")
    parser.add_argument("--skip-inpaint", action="store_true")
    args = parser.parse_args()
    settings = {k: v for k, v in (("sampler", args.sampler), ("eta", args.eta)) if v is not None}
    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    examples = shapes_examples(args.images, args.example_seed)
    start = time.perf_counter()
    colour = recolour(pipe, examples, args.strengths, args.seed, **settings)
    painted = {} if args.skip_inpaint else inpaint(pipe, examples, args.seed, **settings)
    cfg = pipe.settings(**settings)
    print(f"{args.images} images (example seed {args.example_seed}), seed {args.seed}, model {args.model}, "
          f"{cfg.sampler} (eta {cfg.eta:g}) {cfg.steps} steps, guidance {cfg.guidance}, "
          f"{time.perf_counter() - start:.0f} s\n")
    print("| img2img strength | target colour read | mask IoU >= 0.8 | large objects | small objects |\n"
          "|---:|---:|---:|---:|---:|")
    for s, r in colour.items():
        print(f"| {s:g} | {100 * r['color_ok']:.1f} % | {100 * r['iou_ok']:.1f} % | {100 * r['iou_ok_large']:.1f} % | "
              f"{100 * r['iou_ok_small']:.1f} % |")
    print("\n| inpaint | value |\n|---|---:|")
    for k, v in painted.items():
        print(f"| {k} | {v:.3f} |")


if __name__ == "__main__":
    main()
