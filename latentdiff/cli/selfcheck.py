"""`latentdiff selfcheck`: every registered sampler against its diffusers scheduler on an exact denoiser."""

from __future__ import annotations


def add_parser(sub) -> None:
    check = sub.add_parser("selfcheck", help="compare our samplers with diffusers' schedulers on an exact denoiser")
    check.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    check.set_defaults(run=cmd_selfcheck)


def cmd_selfcheck(args) -> int:
    from ..core.selfcheck import main

    return main(args.steps)
