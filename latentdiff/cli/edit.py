"""`latentdiff edit | invert | eval-edit`: edit a real image by inversion and prompt-to-prompt control."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from .common import add_model_args, quiet_libraries, resolve_model

log = logging.getLogger("latentdiff.edit")

PRESETS = ("fast", "reference")


def add_parser(sub) -> None:
    inv = sub.add_parser("invert", help="invert an image once; reuse it for many edits with edit --inversion",
                         description="Invert a real image (DDIM / null-text / negative-prompt / direct) and save it.")
    _image_args(inv)
    inv.add_argument("--output", "-o", type=Path, default=Path("outputs/inversion.safetensors"))
    inv.set_defaults(run=cmd_invert)

    edit = sub.add_parser("edit", help="edit a real image: change its description, keep the rest",
                          description="Invert --image with --source-prompt, then sample --target-prompt from the "
                                      "inversion with prompt-to-prompt attention control. Writes the input, the "
                                      "reconstruction and the edit side by side, plus each alone.")
    _image_args(edit)
    edit.add_argument("--target-prompt", required=True, help="the description with your change")
    edit.add_argument("--inversion", type=Path, help="a file from `latentdiff invert` (skips inverting again)")
    edit.add_argument("--cross-replace", type=float, default=0.8, help="fraction of steps with the source's "
                      "cross-attention (default 0.8)")
    edit.add_argument("--self-replace", type=float, default=0.4, help="fraction of steps with the source's "
                      "self-attention (default 0.4)")
    edit.add_argument("--reweight", nargs="+", default=[], metavar="WORD=FACTOR",
                      help="scale the attention to words of the target prompt, e.g. red=2")
    edit.add_argument("--blend", nargs="+", default=[], metavar="WORD",
                      help="local blending: change only where these words attend")
    edit.add_argument("--skip", type=float, default=0.0, metavar="FRACTION",
                      help="ddpm: start the edit this fraction of the steps in, from the image's noisy latent "
                           "there (weaker edits; default 0)")
    edit.add_argument("--mode", choices=["auto", "replace", "refine"], default="auto",
                      help="word swap (same token count) or refinement (added words); auto picks")
    edit.add_argument("--output", "-o", type=Path, default=Path("outputs/edit.png"))
    edit.set_defaults(run=cmd_edit)

    ev = sub.add_parser("eval-edit", help="reconstruction PSNR/SSIM, speed and word-swap success of each method",
                        description="On shapes-world images: invert with each method, report reconstruction "
                                    "PSNR/SSIM against the input next to the VAE round trip, inversion time, and "
                                    "how often a color word swap is read by the analyzer with the mask kept.")
    add_model_args(ev)
    ev.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    ev.add_argument("--methods", nargs="+", default=["ddim", "npi", "direct", "nti", "ddpm"],
                    choices=["ddim", "npi", "direct", "nti", "ddpm"])
    ev.add_argument("--preset", choices=PRESETS, default="fast", help="null-text settings (default fast)")
    _fixed_point_arg(ev)
    ev.add_argument("--steps", type=int, help="DDIM steps (default: the model's)")
    ev.add_argument("--guidance", type=float, help="guidance scale (default: the model's; for ddpm's edits half "
                    "of it, its noise solved at 1)")
    ev.add_argument("--source-guidance", type=float, help="guidance ddpm's noise is solved at (default 1)")
    ev.add_argument("--seed", type=int, default=0, help="seed of ddpm's noisy latents (default 0)")
    ev.add_argument("--cross-replace", type=float, default=0.8, help="word swap: fraction of steps with the "
                    "source's cross-attention maps (default 0.8)")
    ev.add_argument("--self-replace", type=float, default=0.4, help="word swap: fraction of steps with the "
                    "source's self-attention maps (default 0.4)")
    ev.add_argument("--out", type=Path, default=Path("outputs/eval-edit"))
    ev.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    ev.set_defaults(run=cmd_eval_edit)


def cmd_eval_edit(args) -> int:
    from ..edit.attention import check_fraction
    from ..edit.inversion import NTI_FAST, NTI_REFERENCE
    from ..shapes.evaluate_edit import evaluate_editing, table

    if args.images < 1:
        raise ValueError(f"--images {args.images} must be at least 1")
    _check_fixed_point(args)
    check_fraction(args.cross_replace, "--cross-replace ")
    check_fraction(args.self_replace, "--self-replace ")
    components = _components(args)
    summary = evaluate_editing(components, args.images, args.methods, steps=args.steps, guidance=args.guidance,
                               preset=NTI_REFERENCE if args.preset == "reference" else NTI_FAST,
                               fixed_point_iters=args.fixed_point_iters, cross_replace=args.cross_replace,
                               self_replace=args.self_replace, seed=args.seed,
                               source_guidance=args.source_guidance, out_dir=args.out,
                               progress=not args.quiet)
    print(table(summary))
    print(f"images and JSON in {args.out}/")
    return 0


def _image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", type=Path, required=False, help="the image to edit (any size and mode)")
    p.add_argument("--source-prompt", help="what the image shows")
    p.add_argument("--method", choices=["ddpm", "direct", "nti", "npi", "ddim"], default="ddpm",
                   help="inversion: ddpm (default: edit-friendly DDPM noise; exact reconstruction, the best word "
                        "swaps in eval-edit), direct, null-text, negative-prompt, or plain DDIM")
    p.add_argument("--preset", choices=PRESETS, default="fast",
                   help="null-text settings: fast (default) or reference (the paper's)")
    _fixed_point_arg(p)
    add_model_args(p)
    p.add_argument("--steps", type=int, help="DDIM steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's; for ddpm's edits half "
                   "of it)")
    p.add_argument("--source-guidance", type=float, help="ddpm: the guidance its noise is solved at (default 1); "
                   "the other methods invert for --guidance")
    p.add_argument("--seed", type=int, default=0, help="seed of ddpm's noisy latents (the other methods are "
                   "deterministic)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _fixed_point_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fixed-point-iters", type=int, metavar="N",
                   help="refine each DDIM inversion step by up to N fixed-point iterations, so that sampling "
                        "returns exactly along it (default 3; 0, plain DDIM inversion, for --method ddim and "
                        "--preset reference)")


def _check_fixed_point(args) -> None:
    if args.fixed_point_iters is not None and args.fixed_point_iters < 0:
        raise ValueError(f"--fixed-point-iters {args.fixed_point_iters} must be 0 or more")


def _components(args):
    from ..models import load_components

    quiet_libraries()
    if args.dtype not in ("auto", "fp32"):
        raise ValueError(f"--dtype {args.dtype}: inversion and editing run in fp32 (null-text optimization needs "
                         "it); drop --dtype")
    return load_components(resolve_model(args.model), dtype="fp32", device=args.device,
                           allow_pickle=args.allow_pickle, vae=args.vae, prediction_type=args.prediction_type)


def _invert(args, components):
    from ..edit.inversion import NTI_FAST, NTI_REFERENCE, invert
    from ..pipelines.image_input import default_edit_size, encode_image, load_edit_image

    if args.image is None or args.source_prompt is None:
        raise ValueError("pass --image PATH and --source-prompt TEXT (or --inversion FILE for edit)")
    _check_fixed_point(args)
    if args.source_guidance is not None and args.method != "ddpm":
        raise ValueError(f"--source-guidance applies to --method ddpm; --method {args.method} inverts for --guidance")
    if args.method == "ddpm" and args.guidance is not None and not hasattr(args, "target_prompt"):
        raise ValueError("--guidance is ddpm's edit guidance: pass it to `latentdiff edit --inversion FILE` "
                         "(--source-guidance sets the guidance its noise is solved at)")
    image, notes = load_edit_image(args.image, default_edit_size(components), multiple_of=components.vae_scale_factor)
    for note in notes:
        log.info("%s: %s", args.image, note)
    start = time.perf_counter()
    guidance = args.source_guidance if args.method == "ddpm" else args.guidance
    inversion = invert(components, encode_image(components, image), args.source_prompt, method=args.method,
                       steps=args.steps, guidance=guidance,
                       preset=NTI_REFERENCE if args.preset == "reference" else NTI_FAST,
                       fixed_point_iters=args.fixed_point_iters, seed=args.seed, progress=not args.quiet)
    log.info("inverted with %s in %.1f s", args.method, time.perf_counter() - start)
    return image, inversion


def cmd_invert(args) -> int:
    from ..pipelines.images import check_writable

    check_writable(args.output)
    components = _components(args)
    _, inversion = _invert(args, components)
    print(inversion.save(args.output))
    return 0


def parse_reweight(items) -> dict[str, float]:
    out = {}
    for item in items:
        word, sep, factor = item.rpartition("=")
        try:
            out[word] = float(factor)
        except ValueError:
            sep = ""
        if not sep or not word:
            raise ValueError(f"--reweight {item!r} must look like WORD=FACTOR, e.g. red=2")
    return out


def cmd_edit(args) -> int:
    from PIL import Image

    from ..core.samplers import plan
    from ..edit.attention import AttentionController
    from ..edit.inversion import Inversion, check_skip, edit_guidance, sample_edit
    from ..models import decode_latents, to_uint8
    from ..pipelines import GenerationConfig
    from ..pipelines.image_input import default_edit_size, load_edit_image
    from ..pipelines.images import check_writable, grid, save_png

    reweight = parse_reweight(args.reweight)
    if args.output.suffix.lower() != ".png":
        raise ValueError(f"output '{args.output}' must end in .png")
    check_writable(args.output)
    components = _components(args)
    inversion, image = None, None
    if args.inversion is not None:
        size = default_edit_size(components)
        inversion = Inversion.load(args.inversion, components, size)
        if args.source_prompt and args.source_prompt != inversion.source_prompt:
            raise ValueError(f"--source-prompt differs from the inversion's ({inversion.source_prompt!r}); "
                             "drop it or invert again")
    check_skip(inversion.method if inversion is not None else args.method, args.skip)
    source = inversion.source_prompt if inversion is not None else args.source_prompt
    if inversion is not None:
        steps = inversion.steps
    else:
        steps = args.steps if args.steps is not None else GenerationConfig.for_model(components.path).steps
    plan("ddim", components.schedule, steps)  # validate everything before the (slow) inversion
    if source is None:
        raise ValueError("pass --source-prompt TEXT (what the image shows) or --inversion FILE")
    controller = AttentionController(components.tokenizer, source, args.target_prompt, steps,
                                     cross_replace=args.cross_replace, self_replace=args.self_replace,
                                     reweight=reweight or None, blend_words=args.blend or None, mode=args.mode)
    if inversion is None:
        image, inversion = _invert(args, components)
    elif args.image is not None:
        image = load_edit_image(args.image, inversion.size, multiple_of=components.vae_scale_factor)[0]
    with torch.no_grad(), controller.installed(components.unet):
        latents = sample_edit(components, inversion, args.target_prompt, guidance=args.guidance,
                              controller=controller, progress=not args.quiet, skip=args.skip)
        reconstruction, edited = (Image.fromarray(a) for a in to_uint8(decode_latents(components, latents)))
    # ddpm's settings carry the seed its inversion was drawn with; the other methods' record --seed
    params = dict({"seed": args.seed, **inversion.settings},
                  edit_guidance=edit_guidance(components, inversion, args.guidance), skip=args.skip,
                  target_prompt=args.target_prompt, cross_replace=args.cross_replace, self_replace=args.self_replace,
                  reweight=reweight, blend=args.blend, mode=controller.mode,
                  model=str(components.path), image=str(args.image) if args.image else None)
    if image is not None:  # how close the source branch came, next to the ceiling of any latent inversion
        params.update(_reconstruction_quality(components, image, reconstruction))
        log.info("reconstruction: %.2f dB PSNR against the input (the VAE round trip allows %.2f dB)",
                 params["reconstruction_psnr"], params["vae_round_trip_psnr"])
    out = args.output
    save_png(reconstruction, out.with_name(f"{out.stem}-reconstruction.png"), dict(params, output="reconstruction"))
    save_png(edited, out.with_name(f"{out.stem}-edit.png"), dict(params, output="edit"))
    panels = ([image] if image is not None else []) + [reconstruction, edited]
    save_png(grid(panels, columns=len(panels)), out, dict(params, output="input | reconstruction | edit"))
    for path in (out, out.with_name(f"{out.stem}-reconstruction.png"), out.with_name(f"{out.stem}-edit.png")):
        print(path)
    return 0


def _reconstruction_quality(components, image, reconstruction) -> dict:
    """PSNR (dB) of the reconstruction and of the VAE round trip, both against the (resized) input image."""
    from ..edit.metrics import psnr
    from ..models import vae_round_trip

    with torch.no_grad():
        (round_trip,) = vae_round_trip(components, [image])
    return {"reconstruction_psnr": round(psnr(image, reconstruction), 2),
            "vae_round_trip_psnr": round(psnr(image, round_trip), 2)}
