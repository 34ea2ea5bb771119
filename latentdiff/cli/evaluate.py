"""`latentdiff eval`: prompt adherence on the shapes world, scored by the analyzer, next to the VAE's ceiling."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_model_args, check_eta_given, quiet_libraries, resolve_model, sampler_names


def add_parser(sub) -> None:
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
    ev.add_argument("--prompts", choices=["template", "paraphrase"], default="template",
                    help="template: every attribute said as the training captions say it most (default); "
                         "paraphrase: in phrasings the captions never use (backdrop, 'the background is', "
                         "'colored', sentences, lists, attributes after the background), scored per phrasing too")
    ev.add_argument("--guidance-rescale", type=float, help="guidance rescale φ in [0, 1] (default: the model's)")
    ev.add_argument("--sampler", help=f"{sampler_names()} (default: the model's)")
    ev.add_argument("--eta", type=float, help="DDIM η (default: the model's)")
    ev.add_argument("--out", type=Path, default=Path("outputs/eval"), help="grids and JSON results (default outputs/eval)")
    ev.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    ev.set_defaults(run=cmd_eval)


def cmd_eval(args) -> int:
    from ..core.guidance import check_rescale
    from ..core.samplers import get_sampler
    from ..models import vae_round_trip
    from ..pipelines import Pipeline
    from ..shapes.evaluate import PROMPT_SEED, ROUND_TRIP, evaluate, prompt_set, table
    from ..shapes.paraphrase import PARAPHRASE_SEED, accuracy_by_phrasing, paraphrase_set

    quiet_libraries()
    pipe = Pipeline.from_pretrained(resolve_model(args.model), dtype=args.dtype, device=args.device,
                                    allow_pickle=args.allow_pickle, vae=args.vae, prediction_type=args.prediction_type)
    guidances = args.guidance or sorted({1.0, float(pipe.defaults.guidance)})
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds} must be at least 1")
    if args.guidance_rescale is not None:
        check_rescale(args.guidance_rescale, named="--guidance-rescale ")
    settings = dict(steps=args.steps, sampler=args.sampler, eta=args.eta, guidance_rescale=args.guidance_rescale)
    cfg = pipe.settings(**settings)  # validate before any work
    check_eta_given(args.eta, cfg.sampler)
    if args.prompts == "paraphrase":
        prompt_seed = PARAPHRASE_SEED if args.prompt_seed is None else args.prompt_seed
        prompts = paraphrase_set(args.seen, args.heldout, seed=prompt_seed)
    else:
        prompt_seed = PROMPT_SEED if args.prompt_seed is None else args.prompt_seed
        prompts = prompt_set(args.seen, args.heldout, seed=prompt_seed)
    results = evaluate(pipe, prompts, guidances, seeds=args.seeds, out_dir=args.out, progress=not args.quiet,
                       round_trip=lambda images: vae_round_trip(pipe.components, images), **settings)
    print(f"sampler {cfg.sampler}{f' (eta {cfg.eta:g})' if get_sampler(cfg.sampler).takes_eta else ''}, {cfg.steps} steps, "
          f"guidance rescale {cfg.guidance_rescale:g}, {args.seeds} seeds, prompt seed {prompt_seed}")
    print(f"{args.prompts} prompts: {args.seen} seen, {args.heldout} held out")
    print(table(results))
    if args.prompts == "paraphrase":
        readings = json.loads((args.out / "readings.json").read_text())
        for w, by_name in accuracy_by_phrasing(readings, prompts).items():
            print(f"guidance {w:g}, all attributes by phrasing: "
                  + ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in by_name.items()))
    print(f"('{ROUND_TRIP}': true renderings of the same prompts through the model's VAE alone, the ceiling)")
    print(f"grids and readings in {args.out}/")
    return 0
