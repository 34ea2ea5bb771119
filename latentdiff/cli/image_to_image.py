"""`latentdiff img2img` and `latentdiff inpaint` (with outpainting): generate's options plus an input image."""

from __future__ import annotations

import logging
from pathlib import Path

from .generate import add_generation_args, announce, output_paths_checked, read_prompts, save_results, settings
from .loading import load_pipeline

log = logging.getLogger("latentdiff.cli")
SIDES = ("left", "top", "right", "bottom")


def add_parser(sub) -> None:
    i2i = sub.add_parser("img2img", help="rework an image at a denoising strength",
                         description="Encode --image, noise it to the level --strength selects and sample the "
                                     "prompt from there (diffusers' img2img). The output has the image's size "
                                     "(rounded down to a multiple of the VAE factor) unless --height/--width.")
    add_generation_args(i2i, size_default="the image's")
    i2i.add_argument("--image", type=Path, required=True, help="the image to rework (any size and mode)")
    i2i.add_argument("--strength", type=float, default=0.75,
                     help="fraction of the steps that repaint, in (0, 1]: 0.3 keeps much, 1 keeps little (default 0.75)")
    i2i.set_defaults(run=cmd_img2img)

    inp = sub.add_parser("inpaint", help="repaint the masked region of an image (or extend its canvas)",
                         description="Repaint where --mask is white and keep the rest. An inpainting model (9-channel "
                                     "UNet) sees the mask and the masked image; any other model has the known region "
                                     "put back after every step. --extend pads the canvas and paints the new border "
                                     "(outpainting).")
    add_generation_args(inp, size_default="the image's")
    inp.add_argument("--image", type=Path, required=True, help="the image (any size and mode)")
    inp.add_argument("--mask", type=Path, help="white = repaint, black = keep (any mode; resized to the image)")
    inp.add_argument("--extend", metavar="SIDE=PX,...",
                     help="outpaint: pad these sides by PX pixels and paint them, e.g. left=64,right=64")
    inp.add_argument("--strength", type=float, default=1.0,
                     help="1 (default) repaints from noise; lower starts from the image noised, as img2img")
    inp.add_argument("--mask-blur", type=float, default=4, metavar="PX",
                     help="Gaussian blur of the mask in pixels, softening the seam of the composite (default 4)")
    inp.add_argument("--no-composite", action="store_true",
                     help="keep the decoded image everywhere (default: the input is pasted back outside the mask)")
    inp.set_defaults(run=cmd_inpaint)


def parse_extend(text: str) -> dict[str, int]:
    """'left=64,top=0' → {'left': 64, 'top': 0}; a one-line ValueError naming what is wrong."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        side, sep, value = item.partition("=")
        if not sep or side not in SIDES or not value.strip().isdigit():
            raise ValueError(f"--extend {item!r} must look like SIDE=PX with SIDE one of {', '.join(SIDES)} and PX "
                             "a whole number of pixels, e.g. left=64,right=64")
        out[side] = int(value)
    if not any(out.values()):
        raise ValueError(f"--extend {text!r} extends no side; give at least one SIDE=PX with PX > 0")
    return out


def _input(args, pipe):
    """The input image at its output size, and notes of what was done to it."""
    from ..pipelines.image_input import read_image
    from ..pipelines.image_to_image import prepare_image

    image, notes = read_image(args.image)
    image, fitted = prepare_image(image, pipe.components, args.height, args.width)
    return image, [f"{args.image}: {note}" for note in notes + fitted]


def _say(notes) -> None:
    for note in notes:
        log.info("%s", note)


def cmd_img2img(args) -> int:
    from ..core.samplers import check_strength
    from ..pipelines.image_input import read_image

    prompts = read_prompts(args)
    read_image(args.image)  # a bad file is reported before the model loads
    pipe = load_pipeline(args)
    image, notes = _input(args, pipe)
    cfg = settings(args, pipe, height=image.height, width=image.width)
    check_strength(args.strength, cfg.steps)
    paths = output_paths_checked(args, len(prompts) * cfg.num_images)
    _say(notes)  # what was done to the input, once every setting is known to be good
    announce(args, pipe, cfg)
    results = pipe.img2img(prompts, image, strength=args.strength, settings=cfg, progress=not args.quiet)
    for result in results:
        result.params["image"] = str(args.image)
    save_results(paths, results, prompts, cfg)
    return 0


def cmd_inpaint(args) -> int:
    from ..core.samplers import check_strength
    from ..pipelines.image_input import read_image
    from ..pipelines.inpaint import check_blur, extend_canvas, prepare_mask

    prompts = read_prompts(args)
    if (args.mask is None) == (args.extend is None):
        raise ValueError("pass --mask MASK (repaint where it is white) or --extend SIDE=PX,... (outpaint), one of them")
    extend = parse_extend(args.extend) if args.extend is not None else None
    read_image(args.image)
    mask = read_image(args.mask)[0] if args.mask is not None else None
    pipe = load_pipeline(args)
    image, notes = _input(args, pipe)
    if extend is not None:
        image, mask, said = extend_canvas(image, extend, pipe.components.vae_scale_factor)
        notes += [f"--extend: {note}" for note in said]
    else:
        mask, said = prepare_mask(mask, image.size, 0)  # sized now; blurred by inpaint
        notes += [f"{args.mask}: {note}" for note in said]
    check_blur(args.mask_blur)
    cfg = settings(args, pipe, height=image.height, width=image.width)
    check_strength(args.strength, cfg.steps)
    paths = output_paths_checked(args, len(prompts) * cfg.num_images)
    _say(notes)
    announce(args, pipe, cfg)
    results = pipe.inpaint(prompts, image, mask, strength=args.strength, mask_blur=args.mask_blur,
                           composite=not args.no_composite, settings=cfg, progress=not args.quiet)
    for result in results:
        result.params.update(image=str(args.image), mask=str(args.mask) if args.mask else None, extend=extend)
    save_results(paths, results, prompts, cfg)
    return 0
