"""The `latentdiff` command line. User mistakes print one line and exit with code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_USAGE = 2


class OneLineToStderr(logging.Handler):
    """Library log records as 'latentdiff: level: message' on whatever sys.stderr is now."""

    def emit(self, record):
        print(f"latentdiff: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def setup_logging() -> None:
    logger = logging.getLogger("latentdiff")
    if not any(isinstance(h, OneLineToStderr) for h in logger.handlers):
        logger.addHandler(OneLineToStderr())
    logger.setLevel(logging.INFO)


def quiet_libraries() -> None:
    """Keep third-party loading chatter (progress bars, info logs) off the terminal."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def add_model_args(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL

    p.add_argument("--model", default=None, help=f"diffusers-layout model folder or cached hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights and compute dtype (auto: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = CUDA when available")
    p.add_argument("--allow-pickle", action="store_true", help="also load .bin (pickle) weights; only for files you trust")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit code 2), like every other user mistake."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="latentdiff",
        description="Latent diffusion: generate, fine-tune and edit images; numerically equal to diffusers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = sub.add_parser("generate", help="text to image", description="Generate images from a text prompt.")
    gen.add_argument("prompt", nargs="*", help="the prompt (several words are joined); or use --from-file")
    gen.add_argument("--from-file", type=Path, help="a text file with one prompt per line")
    gen.add_argument("--negative-prompt", help="what to steer away from (default: empty)")
    add_model_args(gen)
    gen.add_argument("--lora", type=Path, help="LoRA weights (.safetensors or a folder) to apply to the UNet")
    gen.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (default 1)")
    gen.add_argument("--sampler", help="ddim, ddpm, dpmpp-2m, dpmpp-2m-sde, dpmpp-2m-karras, dpmpp-2m-sde-karras, "
                                        "euler or euler-a (default: the model's, else ddim)")
    gen.add_argument("--steps", type=int, help="sampling steps (default 50)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale w (default 7.5; 1 = off)")
    gen.add_argument("--guidance-rescale", type=float, help="guidance rescale φ in [0, 1] (Lin et al. 2023)")
    gen.add_argument("--eta", type=float, help="DDIM η: 0 deterministic (default), 1 DDPM-like")
    gen.add_argument("--seed", type=int, help="seed of image 0; image i uses seed + i (default 0)")
    gen.add_argument("--num-images", type=int, help="images per prompt (default 1)")
    gen.add_argument("--height", type=int, help="pixels, a multiple of the VAE factor (default: the model's)")
    gen.add_argument("--width", type=int, help="pixels, a multiple of the VAE factor (default: the model's)")
    gen.add_argument("--output", "-o", default="outputs/image.png",
                     help="PNG file, or a folder ending in /; several images are numbered and gridded")
    gen.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    tr = sub.add_parser("train", help="train or fine-tune a UNet (full or LoRA) on a folder of images",
                        description="Train with a YAML recipe; override any key with --section.key=value. "
                                    "Works under `accelerate launch` too.")
    tr.add_argument("--config", type=Path, help="YAML recipe (see configs/)")
    tr.add_argument("--resume", help="'latest' or a checkpoint folder to continue from")

    ev = sub.add_parser("eval", help="prompt adherence on the shapes world, scored by the analyzer",
                        description="Generate a fixed set of seen and held-out shapes-world prompts with several "
                                    "seeds at guidance 1 and the model's default (or --guidance), and report the "
                                    "analyzer's accuracy per attribute.")
    add_model_args(ev)
    ev.add_argument("--guidance", type=float, nargs="+", help="guidance scales (default: 1 and the model's default)")
    ev.add_argument("--seeds", type=int, default=2, help="images per prompt (default 2)")
    ev.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    ev.add_argument("--seen", type=int, default=48, help="prompts with seen (shape, color) pairs (default 48)")
    ev.add_argument("--heldout", type=int, default=24, help="prompts with held-out pairs (default 24)")
    ev.add_argument("--prompt-seed", type=int,
                    help="draws the prompt set (default 1234, the set of the recorded tables); another seed gives a "
                         "second set, to tell a difference from noise")
    ev.add_argument("--guidance-rescale", type=float, help="guidance rescale φ in [0, 1] (default: the model's)")
    ev.add_argument("--sampler", help="sampler (default: the model's)")
    ev.add_argument("--eta", type=float, help="DDIM η (default: the model's)")
    ev.add_argument("--out", type=Path, default=Path("outputs/eval"), help="grids and JSON results (default outputs/eval)")
    ev.add_argument("--quiet", "-q", action="store_true", help="no progress bars")

    from .edit import commands as edit_commands

    edit_commands.add_parsers(sub, add_model_args)

    from .shapes import cli as shapes_cli

    shapes_cli.add_parser(sub)

    check = sub.add_parser("selfcheck", help="compare our samplers with diffusers' schedulers on an exact denoiser")
    check.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    return parser


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


def cmd_generate(args) -> int:
    from .images import check_writable, grid, output_paths, save_png
    from .pipeline import Pipeline

    prompts = read_prompts(args)
    model = resolve_model(args.model)
    quiet_libraries()
    pipe = Pipeline.from_pretrained(model, dtype=args.dtype, device=args.device, allow_pickle=args.allow_pickle,
                                    lora=args.lora, lora_scale=args.lora_scale)
    settings = dict(negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance,
                    guidance_rescale=args.guidance_rescale, sampler=args.sampler, eta=args.eta, seed=args.seed,
                    num_images=args.num_images, height=args.height, width=args.width)
    cfg = pipe.settings(**settings)  # validate before any work
    check_eta_use(args.eta, cfg.sampler)
    paths = output_paths(args.output, len(prompts) * cfg.num_images)
    check_writable(paths[0])
    results = pipe.generate(prompts, progress=not args.quiet, **settings)
    for path, result in zip(paths, results):
        save_png(result.image, path, result.params)
        print(path)
    if len(results) > 1:
        path = paths[0].with_name(paths[0].stem.rsplit("-", 1)[0] + "-grid.png")
        save_png(grid([r.image for r in results], columns=cfg.num_images if len(prompts) > 1 else None), path)
        print(path)
    return 0


def check_eta_use(eta, sampler: str) -> None:
    """A given --eta means DDIM's η; with another sampler it would be ignored, so say so instead."""
    if eta is not None and sampler != "ddim":
        raise ValueError(f"--eta sets DDIM's η but the sampler is {sampler!r}; drop --eta or use --sampler ddim")


def resolve_model(model):
    from .models import DEFAULT_MODEL, ModelError

    if model is not None:
        return model
    if not DEFAULT_MODEL.is_dir():
        raise ModelError(f"the offline default model is not in {DEFAULT_MODEL}; build it with `latentdiff shapes "
                         "build` or pass --model PATH to a diffusers-layout model folder")
    return DEFAULT_MODEL


def cmd_eval(args) -> int:
    from .models import vae_round_trip
    from .pipeline import Pipeline
    from .shapes.evaluate import PROMPT_SEED, ROUND_TRIP, evaluate, prompt_set, table

    quiet_libraries()
    pipe = Pipeline.from_pretrained(resolve_model(args.model), dtype=args.dtype, device=args.device,
                                    allow_pickle=args.allow_pickle)
    guidances = args.guidance or sorted({1.0, float(pipe.defaults.guidance)})
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds} must be at least 1")
    if args.guidance_rescale is not None and not 0.0 <= args.guidance_rescale <= 1.0:
        raise ValueError(f"--guidance-rescale {args.guidance_rescale} must be in [0, 1]")
    settings = dict(steps=args.steps, sampler=args.sampler, eta=args.eta, guidance_rescale=args.guidance_rescale)
    cfg = pipe.settings(**settings)  # validate before any work
    check_eta_use(args.eta, cfg.sampler)
    prompt_seed = PROMPT_SEED if args.prompt_seed is None else args.prompt_seed
    results = evaluate(pipe, prompt_set(args.seen, args.heldout, seed=prompt_seed), guidances, seeds=args.seeds,
                       out_dir=args.out, progress=not args.quiet,
                       round_trip=lambda images: vae_round_trip(pipe.components, images), **settings)
    print(f"sampler {cfg.sampler}{f' (eta {cfg.eta:g})' if cfg.sampler == 'ddim' else ''}, {cfg.steps} steps, "
          f"guidance rescale {cfg.guidance_rescale:g}, {args.seeds} seeds, prompt seed {prompt_seed}")
    print(table(results))
    print(f"('{ROUND_TRIP}': true renderings of the same prompts through the model's VAE alone, the ceiling)")
    print(f"grids and readings in {args.out}/")
    return 0


def cmd_train(args, overrides: list[str]) -> int:
    from .config import load_config
    from .train import TrainingError, train

    config = load_config(args.config, overrides)
    quiet_libraries()
    try:
        result = train(config, resume=args.resume)
    except TrainingError as error:
        print(f"latentdiff train: error: {error}", file=sys.stderr)
        return 1
    if result.model_dir or result.lora_path:
        print(result.model_dir or result.lora_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    setup_logging()
    try:
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "train":
            return cmd_train(args, extra)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command in ("edit", "invert", "eval-edit"):
            from .edit import commands as edit_commands

            return getattr(edit_commands, f"cmd_{args.command.replace('-', '_')}")(args)
        if args.command == "shapes":
            from .shapes import cli as shapes_cli

            return shapes_cli.run(args)
        if args.command == "selfcheck":
            from . import selfcheck

            return selfcheck.main(args.steps)
    except ValueError as error:  # user mistakes surface as ValueError with a one-line message
        print(f"latentdiff {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"latentdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
