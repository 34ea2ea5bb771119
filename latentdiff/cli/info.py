"""`latentdiff info IMG`: the generation parameters an image carries, as AUTOMATIC1111 writes them (or as JSON)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    info = sub.add_parser("info", help="show the generation parameters stored in an image",
                          description="Print the AUTOMATIC1111-style parameters text of a PNG (ours or another "
                                      "tool's; also A1111's JPEG/WebP EXIF comment). --json prints settings instead: "
                                      "our own JSON when the image has it, else those read from the A1111 text with "
                                      "the fields we cannot honour under \"unhonoured\".")
    info.add_argument("image", type=Path, metavar="IMG", help="the image file")
    info.add_argument("--json", action="store_true", help="print the settings as JSON")
    info.set_defaults(run=cmd_info)


def cmd_info(args) -> int:
    from ..pipelines.images import read_png_parameters
    from ..pipelines.parameters import format_parameters, parse_parameters, settings_from_parameters

    ours, text = read_png_parameters(args.image)
    if not args.json:
        print(text if text is not None else format_parameters(ours))
        return 0
    if ours is None:
        settings, unhonoured = settings_from_parameters(parse_parameters(text))
        ours = dict(settings, unhonoured=unhonoured)
    print(json.dumps(ours, indent=2, ensure_ascii=False))
    return 0
