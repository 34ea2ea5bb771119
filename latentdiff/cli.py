"""The `latentdiff` command line. User mistakes print one line and exit with code 2."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentdiff",
        description="Latent diffusion: generate, fine-tune and edit images; numerically equal to diffusers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("selfcheck", help="compare our samplers with diffusers' schedulers on an exact denoiser")
    check.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "selfcheck":
            from . import selfcheck

            return selfcheck.main(args.steps)
    except ValueError as error:  # user mistakes surface as ValueError with a one-line message
        print(f"latentdiff {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
