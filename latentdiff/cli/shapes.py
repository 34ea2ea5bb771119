"""`latentdiff shapes render | build | analyze`: the shapes world's dataset, default model, and analyzer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..shapes.world import HELD_OUT, SPLITS
from .common import EXIT_USAGE


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``shapes`` command (subcommands ``render`` and ``analyze``) to ``subparsers``."""
    shapes = subparsers.add_parser(
        "shapes", help="the shapes world: render its dataset, analyze images",
        description="The procedural shapes world the offline default model is trained on.")
    shapes.set_defaults(shapes_parser=shapes, run=run)
    sub = shapes.add_subparsers(dest="shapes_command", metavar="SUBCOMMAND")

    held_out = ", ".join(f"{color} {shape}" for shape, color in HELD_OUT)
    render = sub.add_parser(
        "render", help="write N captioned 64×64 images and metadata.jsonl (imagefolder format)",
        description=f"Render a shapes-world dataset. The train split never shows the held-out pairs "
                    f"({held_out}); the heldout split shows only them.")
    render.add_argument("--out", type=Path, required=True, help="dataset folder (created; must be empty)")
    render.add_argument("--n", type=int, required=True, help="number of images")
    render.add_argument("--seed", type=int, default=0, help="dataset seed (default 0); image i is drawn from (seed, i)")
    render.add_argument("--split", choices=SPLITS, default="train", help="train (default) or heldout")
    render.add_argument("--overwrite", action="store_true",
                        help="replace a previous dataset in --out (its metadata.jsonl and numbered PNGs)")
    render.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    build = sub.add_parser(
        "build", help="train the offline default model from scratch (VAE, CLIP, UNet) and store it",
        description="Render the world, train stage 1 (VAE), stage 2 (CLIP text encoder), stage 3 (UNet) "
                    "and, when unet-finetune.yaml exists, stage 4 (the UNet fine-tuned, possibly on another noise "
                    "schedule) with the recipes in --configs, and write a diffusers-layout folder in fp16. "
                    "Finished stages in --workdir are reused, so an interrupted build continues.")
    build.add_argument("--configs", type=Path, default=Path("configs/shapes"), help="recipe folder")
    build.add_argument("--workdir", type=Path, default=Path("outputs/shapes-build"), help="intermediate outputs")
    build.add_argument("--out", type=Path, default=Path("weights/shapes"), help="the model folder to write")
    build.add_argument("--quiet", "-q", action="store_true", help="no progress bars")

    analyze = sub.add_parser("analyze", help="print the attributes read from images, one JSON line each",
                             description="Read shape, color, size, position and background from 64×64 images.")
    analyze.add_argument("images", nargs="+", type=Path, help="image files")
    return shapes


def _render(args) -> int:
    from ..shapes.dataset import render_dataset

    path = render_dataset(args.out, args.n, args.seed, args.split, overwrite=args.overwrite,
                          progress=not args.quiet)
    print(path)
    return 0


def _analyze(args) -> int:
    from PIL import Image

    from ..shapes.analyze import analyze

    for path in args.images:
        try:
            with Image.open(path) as image:
                attrs = analyze(image)
        except OSError as error:
            raise ValueError(f"cannot read image '{path}': {error}") from None
        print(json.dumps({"file": str(path), **attrs}))
    return 0


def _build(args) -> int:
    from ..build.recipe import build

    report = build(args.configs, args.workdir, args.out, progress=not args.quiet)
    print(json.dumps(report, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``latentdiff shapes …`` from parsed arguments; returns the exit code."""
    command = getattr(args, "shapes_command", None)
    if command is None:
        args.shapes_parser.print_help()
        return EXIT_USAGE
    return {"render": _render, "analyze": _analyze, "build": _build}[command](args)
