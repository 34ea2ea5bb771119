"""`latentdiff generate`: text to image in batches, each image's PNG (with its parameters) written as soon as its
batch is done, a job resumed where it stopped, and a grid for small jobs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .common import add_model_args, check_eta_given, sampler_names
from .loading import apply_png, load_pipeline

log = logging.getLogger("latentdiff.cli")
EXIT_LINES_SKIPPED = 3  # the job ran, but some of its lines were malformed and skipped (each named on stderr)


def add_parser(sub) -> None:
    gen = sub.add_parser("generate", help="text to image", description="Generate images from a text prompt.")
    add_generation_args(gen)
    hires = gen.add_argument_group("hires fix", "generate at the base size, upscale, then rework with img2img")
    hires.add_argument("--hires-scale", type=float, metavar="X", help="upscale factor > 1 (e.g. 2); off by default")
    hires.add_argument("--hires-strength", type=float, help="img2img strength of the second pass (default 0.5)")
    hires.add_argument("--hires-steps", type=int, help="steps of the second pass (default: --steps)")
    hires.add_argument("--hires-upscaler", choices=["lanczos", "latent"],
                       help="lanczos: the decoded image in pixels (default); latent: the latents, bilinear")
    gen.add_argument("--from-png", type=Path, metavar="IMG", help="make an image again from the parameters it "
                     "carries (ours: the same pixels; an AUTOMATIC1111 PNG: its settings as far as they are ours, "
                     "the others named in a warning); any other option given overrides the image's")
    jobs = gen.add_argument_group("bulk jobs", f"--from-file: one prompt a line, or JSON Lines with per-line prompt, "
                                  "negative_prompt, seed, steps, guidance, sampler, width, height, num_images and "
                                  "output (a file name stem). Malformed lines are named and skipped (exit code "
                                  f"{EXIT_LINES_SKIPPED}); images already made with the same parameters are skipped, "
                                  "so rerunning a stopped job finishes it.")
    jobs.add_argument("--batch-size", type=int, help="images per batch (default: 4 on a CPU; on CUDA 8 at 512 px, "
                      "more or fewer in proportion to the image area)")
    jobs.add_argument("--overwrite", action="store_true",
                      help="replace existing PNGs made with other parameters (default: refuse, naming the file)")
    gen.set_defaults(run=cmd_generate)


def add_generation_args(gen, size_default: str = "the model's") -> None:
    """The options of every command that generates images (generate, img2img, inpaint)."""
    gen.add_argument("prompt", nargs="*", help="the prompt (several words are joined); or use --from-file")
    gen.add_argument("--from-file", type=Path, help="a text file with one prompt per line (generate: or a JSONL job)")
    gen.add_argument("--negative-prompt", help="what to steer away from (default: empty)")
    add_model_args(gen)
    gen.add_argument("--lora", action="append", metavar="PATH[:WEIGHT]", help="a LoRA (diffusers or kohya/A1111 "
                     ".safetensors, or a folder) fused into the UNet and the text encoder, with its weight after a "
                     "':' (e.g. style.safetensors:0.7); repeat for several")
    gen.add_argument("--lora-scale", type=float, default=1.0, help="weight of each --lora given without one "
                     "(default 1)")
    gen.add_argument("--embedding", action="append", metavar="PATH[:TOKEN]", help="a textual-inversion embedding "
                     "(diffusers or A1111 file), used in prompts by its token: the file's stem unless given after a "
                     "':'; repeat for several")
    gen.add_argument("--vae-tiling", action="store_true", help="decode (and encode) large images tile by tile, as "
                     "diffusers' vae.enable_tiling(): less memory, seams blended")
    gen.add_argument("--vae-slicing", action="store_true", help="decode a batch one image at a time, as diffusers' "
                     "vae.enable_slicing()")
    gen.add_argument("--sampler", help=f"{sampler_names()} ({model_default('sampler')})")
    gen.add_argument("--steps", type=int, help=f"sampling steps ({model_default('steps')})")
    gen.add_argument("--guidance", type=float, help=f"classifier-free guidance scale w, 1 = off "
                     f"({model_default('guidance')})")
    gen.add_argument("--guidance-rescale", type=float, help="guidance rescale φ in [0, 1] (Lin et al. 2023; "
                     f"{model_default('guidance_rescale')})")
    gen.add_argument("--eta", type=float, help=f"DDIM η: 0 deterministic, 1 DDPM-like ({model_default('eta')})")
    gen.add_argument("--clip-skip", type=int, metavar="N", help="use the text encoder's N-th layer from the end, "
                     "as A1111's 'Clip skip' (default 1: its output; 2: the penultimate layer)")
    gen.add_argument("--prompt-syntax", choices=["a1111", "plain"], help="a1111 (default): (word) ×1.1, "
                     "(word:1.3), [word] ÷1.1, \\( for a literal bracket, BREAK to start a new chunk; plain: the "
                     "text as it is. Prompts longer than the text encoder's window are encoded in chunks either way")
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


def model_default(name: str) -> str:
    """'default: the model's (the default model: X), else Y' for --help: a model folder's latentdiff_generation.json
    may set its own defaults, as the default model does."""
    from ..models import DEFAULT_MODEL
    from ..pipelines.settings import GenerationConfig

    fallback, shipped = getattr(GenerationConfig(), name), getattr(GenerationConfig.for_model(DEFAULT_MODEL), name)
    text = f"default: the model's, else {_shown(fallback)}"
    return text if shipped == fallback else f"{text}; the default model's: {_shown(shipped)}"


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(cfg, pipe, given: set) -> str:
    """One line: the settings a run uses, naming those that came from the model's generation config."""
    from ..core.samplers import get_sampler
    from ..pipelines.settings import GenerationConfig

    eta = f" (η {cfg.eta:g})" if get_sampler(cfg.sampler).takes_eta else ""
    parts = [f"sampler {cfg.sampler}{eta}", f"{cfg.steps} steps", f"guidance {cfg.guidance:g}",
             f"{cfg.width}x{cfg.height}", f"seed {cfg.seed}"]
    if cfg.clip_skip != 1:
        parts.append(f"clip skip {cfg.clip_skip}")
    plain = GenerationConfig()
    from_model = [name for name in ("sampler", "eta", "steps", "guidance", "guidance_rescale", "clip_skip")
                  if name not in given and getattr(pipe.defaults, name) != getattr(plain, name)]
    note = f" ({', '.join(from_model)} from the model's generation config)" if from_model else ""
    return "settings: " + ", ".join(parts) + note


def settings(args, pipe, **size):
    """The generation settings from the options, validated once (``size``: height/width decided by the command)."""
    cfg = pipe.settings(negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance,
                        guidance_rescale=args.guidance_rescale, sampler=args.sampler, eta=args.eta, seed=args.seed,
                        num_images=args.num_images, clip_skip=args.clip_skip, prompt_syntax=args.prompt_syntax,
                        **{"height": args.height, "width": args.width, **size})
    check_eta_given(args.eta, cfg.sampler)
    return cfg


def announce(args, pipe, cfg) -> None:
    """Log the settings a run uses in one line, once every input is known to be good (just before the work)."""
    given = {name for name in ("sampler", "eta", "steps", "guidance", "guidance_rescale", "clip_skip")
             if getattr(args, name) is not None}
    log.info("%s", describe(cfg, pipe, given))


def output_paths_checked(args, count: int) -> list:
    from ..pipelines.images import check_writable, output_paths

    paths = output_paths(args.output, count)
    check_writable(paths[0])
    return paths


def cmd_generate(args) -> int:
    from dataclasses import replace

    from ..pipelines.hires import check_hires
    from ..pipelines.images import check_writable, output_paths, save_png
    from ..pipelines.jobs import JobLine, already_made, batches, default_batch_size, read_job, tasks

    if args.from_png is not None:
        if args.from_file is not None:
            raise ValueError("pass either --from-png or --from-file, not both")
        apply_png(args)
    args.hires_strength = 0.5 if args.hires_strength is None else args.hires_strength
    args.hires_upscaler = args.hires_upscaler or "lanczos"
    lines, bad = [], []
    if args.prompt:
        lines.append(JobLine(0, " ".join(args.prompt), {}))
    if args.from_file is not None:
        found, bad = read_job(args.from_file)
        lines += found
    if not lines:
        raise ValueError("no prompt given: pass PROMPT or --from-file FILE (one prompt a line, or a JSONL job)"
                         if not bad else f"every line of '{args.from_file}' is malformed; the first: {bad[0]}")
    if args.hires_scale is not None:
        check_hires(args.hires_scale, args.hires_strength, args.hires_steps, args.hires_upscaler)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be at least 1")
    state = _processes()
    pipe = load_pipeline(args, device=state.device if state is not None and state.device.type == "cuda" else None)
    cfg = settings(args, pipe)
    made_by = getattr(args, "png_model_hash", None)
    if made_by and pipe.model_hash() and made_by != pipe.model_hash():
        log.warning("'%s' was made by a model with hash %s; this one's is %s, so the image will differ",
                    args.from_png, made_by, pipe.model_hash())
    base = output_paths(args.output, 1)[0]  # a file, or the base of numbered files
    work, unusable = tasks(lines, cfg, pipe.settings, base, str(args.from_file))
    bad += unusable
    if not work:
        raise ValueError(f"no line of '{args.from_file}' can run; the first problem: {bad[0]}")
    extra = {} if args.hires_scale is None else dict(
        hires_scale=args.hires_scale, hires_strength=args.hires_strength, hires_upscaler=args.hires_upscaler,
        hires_steps=args.hires_steps or None)
    for folder in sorted({task.path.parent for task in work}):
        check_writable(folder / "x.png")
    todo = [task for task in work if not already_made(task, _expected(pipe, task, extra), args.overwrite)]
    main_process = state is None or state.is_main_process
    for message in bad if main_process else []:
        log.warning("%s", message)
    if len(todo) < len(work) and main_process:
        log.info("%d of %d images already made with the same parameters; making the other %d",
                 len(work) - len(todo), len(work), len(todo))
    if state is not None:  # every process has read the same finished files before any writes; then its share
        state.wait_for_everyone()
        share = -(-len(todo) // state.num_processes)
        todo = todo[state.process_index * share: (state.process_index + 1) * share]
    if main_process:
        announce(args, pipe, cfg)
    size = args.batch_size or default_batch_size(cfg, pipe.components.vae_scale_factor,
                                                 pipe.components.device.type == "cuda")
    from tqdm.auto import tqdm

    groups = list(batches(todo, size, group=lambda task: pipe.chunk_count(task.prompt, task.cfg)))
    steps_bar = not args.quiet and len(groups) == 1  # one batch: its sampling steps; several: a bar of images
    share = "" if state is None else f" (process 1 of {state.num_processes}, its share)"
    bar = tqdm(total=len(todo), unit="img", desc=f"images{share}", dynamic_ncols=True,
               disable=args.quiet or steps_bar or not main_process)
    for batch in groups:
        first = replace(batch[0].cfg, num_images=1)  # image i of the batch: seed + i
        prompts = [task.prompt for task in batch]
        if args.hires_scale is None:
            results = pipe.generate(prompts, settings=first, progress=steps_bar)
        else:
            results = pipe.hires_fix(prompts, scale=args.hires_scale, strength=args.hires_strength,
                                     hires_steps=args.hires_steps, upscaler=args.hires_upscaler, settings=first,
                                     progress=steps_bar)
        for task, result in zip(batch, results):
            save_png(result.image, task.path, result.params)
            bar.write(str(task.path), file=sys.stdout)
        sys.stdout.flush()  # each finished file is announced as soon as it exists
        bar.update(len(batch))
    bar.close()
    if state is not None:
        state.wait_for_everyone()
    if not any(line.output for line in lines) and main_process:  # numbered images only: named files get no grid
        _grid(work, columns=cfg.num_images if len(lines) > 1 else None)
    return EXIT_LINES_SKIPPED if bad else 0


def _processes():
    """Accelerate's process state under ``accelerate launch`` / torchrun with several processes (gloo on a CPU-only
    machine, as training), else None. The job is split into contiguous shares, one per process, so the set of
    outputs is the one a single process makes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _expected(pipe, task, extra: dict) -> dict:
    """The parameters the task's PNG will carry: what a finished one is compared with."""
    if extra and extra.get("hires_steps") is None:
        extra = dict(extra, hires_steps=task.cfg.steps)
    return pipe.params(task.cfg, task.prompt, task.cfg.seed, **extra)


def _grid(work, columns) -> None:
    """A grid of the job's images (read back from their files, resumed ones included), for small jobs."""
    from PIL import Image

    from ..pipelines.images import grid, save_png
    from ..pipelines.jobs import GRID_LIMIT

    if not 1 < len(work) <= GRID_LIMIT or len({task.path.parent for task in work}) != 1:
        return
    images = []
    for task in work:
        with Image.open(task.path) as image:
            images.append(image.convert("RGB"))
    if len({image.size for image in images}) != 1:
        return
    first = work[0].path
    path = first.with_name(first.stem.rsplit("-", 1)[0] + "-grid.png")
    save_png(grid(images, columns=columns), path)
    print(path)


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
