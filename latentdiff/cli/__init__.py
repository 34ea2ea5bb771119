"""The `latentdiff` command line, the roof of the package: one module per command group, ``common`` for what they
share. Nothing in the library imports this package.

User mistakes print one line and exit with code 2 (:data:`~latentdiff.cli.common.EXIT_USAGE`).
"""

from __future__ import annotations

import argparse
import sys

from . import convert, edit, evaluate, generate, image_to_image, info, selfcheck, serve, shapes, train
from .common import EXIT_INTERRUPTED, EXIT_USAGE, Parser, setup_logging

# each adds its parser(s) with set_defaults(run=...)
COMMANDS = (generate, image_to_image, train, evaluate, edit, shapes, selfcheck, info, serve, convert)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="latentdiff",
        description="Latent diffusion: generate, fine-tune and edit images; numerically equal to diffusers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    args.overrides = extra
    setup_logging()
    try:
        return args.run(args)
    except ValueError as error:  # the one handler: user mistakes surface as ValueError with a one-line message
        print(f"latentdiff {_command_name(args)}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"latentdiff {_command_name(args)}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _command_name(args) -> str:
    sub = getattr(args, "shapes_command", None)
    return f"{args.command} {sub}" if args.command == "shapes" and sub else args.command
