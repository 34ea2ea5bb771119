"""`latentdiff generate`: text to image, one PNG per image (with its parameters) and a grid."""

from __future__ import annotations

from pathlib import Path

from .common import add_model_args, check_eta_given, quiet_libraries, resolve_model, sampler_names


def add_parser(sub) -> None:
    gen = sub.add_parser("generate", help="text to image", description="Generate images from a text prompt.")
    add_generation_args(gen)
    hires = gen.add_argument_group("hires fix", "generate at the base size, upscale, then rework with img2img")
    hires.add_argument("--hires-scale", type=float, metavar="X", help="upscale factor > 1 (e.g. 2); off by default")
    hires.add_argument("--hires-strength", type=float, default=0.5, help="img2img strength of the second pass "
                       "(default 0.5)")
    hires.add_argument("--hires-steps", type=int, help="steps of the second pass (default: --steps)")
    hires.add_argument("--hires-upscaler", choices=["lanczos", "latent"], default="lanczos",
                       help="lanczos: the decoded image in pixels (default); latent: the latents, bilinear")
    gen.set_defaults(run=cmd_generate)


def add_generation_args(gen, size_default: str = "the model's") -> None:
    """The options of every command that generates images (generate, img2img, inpaint)."""
    gen.add_argument("prompt", nargs="*", help="the prompt (several words are joined); or use --from-file")
    gen.add_argument("--from-file", type=Path, help="a text file with one prompt per line")
    gen.add_argument("--negative-prompt", help="what to steer away from (default: empty)")
    add_model_args(gen)
    gen.add_argument("--lora", type=Path, help="LoRA weights (.safetensors or a folder) to apply to the UNet")
    gen.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (default 1)")
    gen.add_argument("--sampler", help=f"{sampler_names()} (default: the model's, else ddim)")
    gen.add_argument("--steps", type=int, help="sampling steps (default 50)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale w (default 7.5; 1 = off)")
    gen.add_argument("--guidance-rescale", type=float, help="guidance rescale φ in [0, 1] (Lin et al. 2023)")
    gen.add_argument("--eta", type=float, help="DDIM η: 0 deterministic (default), 1 DDPM-like")
    gen.add_argument("--seed", type=int, help="seed of image 0; image i uses seed + i (default 0)")
    gen.add_argument("--num-images", type=int, help="images per prompt (default 1)")
    gen.add_argument("--height", type=int, help=f"pixels, a multiple of the VAE factor (default: {size_default})")
    gen.add_argument("--width", type=int, help=f"pixels, a multiple of the VAE factor (default: {size_default})")
    gen.add_argument("--output", "-o", default="outputs/image.png",
                     help="PNG file, or a folder ending in /; several images are numbered and gridded")
    gen.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def read_prompts(args) -> list[str]:
    prompts = []
    if args.prompt:
        prompts.append(" ".join(args.prompt))
    if args.from_file is not None:
        try:
            lines = args.from_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read --from-file '{args.from_file}': {error}") from None
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError("no prompt given: pass PROMPT or --from-file FILE with one prompt per line")
    return prompts


def load_pipeline(args):
    from ..pipelines import Pipeline

    model = resolve_model(args.model)
    quiet_libraries()
    return Pipeline.from_pretrained(model, dtype=args.dtype, device=args.device, allow_pickle=args.allow_pickle,
                                    lora=args.lora, lora_scale=args.lora_scale)


def settings(args, pipe, **size):
    """The generation settings from the options, validated once (``size``: height/width decided by the command)."""
    cfg = pipe.settings(negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance,
                        guidance_rescale=args.guidance_rescale, sampler=args.sampler, eta=args.eta, seed=args.seed,
                        num_images=args.num_images, **{"height": args.height, "width": args.width, **size})
    check_eta_given(args.eta, cfg.sampler)
    return cfg


def output_paths_checked(args, count: int) -> list:
    from ..pipelines.images import check_writable, output_paths

    paths = output_paths(args.output, count)
    check_writable(paths[0])
    return paths


def cmd_generate(args) -> int:
    from ..pipelines.hires import check_hires

    prompts = read_prompts(args)
    if args.hires_scale is not None:
        check_hires(args.hires_scale, args.hires_strength, args.hires_steps, args.hires_upscaler)
    pipe = load_pipeline(args)
    cfg = settings(args, pipe)
    paths = output_paths_checked(args, len(prompts) * cfg.num_images)
    if args.hires_scale is None:
        results = pipe.generate(prompts, settings=cfg, progress=not args.quiet)
    else:
        results = pipe.hires_fix(prompts, scale=args.hires_scale, strength=args.hires_strength, hires_steps=args.hires_steps,
                                 upscaler=args.hires_upscaler, settings=cfg, progress=not args.quiet)
    save_results(paths, results, prompts, cfg)
    return 0


def save_results(paths, results, prompts, cfg) -> None:
    """Each image with its parameters, one path per line on stdout, and a grid when there are several."""
    from ..pipelines.images import grid, save_png

    for path, result in zip(paths, results):
        save_png(result.image, path, result.params)
        print(path)
    if len(results) > 1:
        path = paths[0].with_name(paths[0].stem.rsplit("-", 1)[0] + "-grid.png")
        save_png(grid([r.image for r in results], columns=cfg.num_images if len(prompts) > 1 else None), path)
        print(path)
