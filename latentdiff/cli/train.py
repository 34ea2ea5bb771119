"""`latentdiff train`: train or fine-tune a UNet from a YAML recipe with --section.key=value overrides."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import quiet_libraries

EXIT_TRAINING_STOPPED = 1  # training started but could not go on (e.g. a non-finite loss); checkpoints are kept


def add_parser(sub) -> None:
    tr = sub.add_parser("train", help="train or fine-tune a UNet (full or LoRA) on a folder of images",
                        description="Train with a YAML recipe; override any key with --section.key=value. "
                                    "Works under `accelerate launch` too.")
    tr.add_argument("--config", type=Path, help="YAML recipe (see configs/)")
    tr.add_argument("--resume", help="'latest' or a checkpoint folder to continue from")
    tr.set_defaults(run=cmd_train, takes_overrides=True)


def cmd_train(args) -> int:
    from ..training.config import load_config
    from ..training.train import TrainingError, train

    config = load_config(args.config, args.overrides)
    quiet_libraries()
    try:
        result = train(config, resume=args.resume)
    except TrainingError as error:
        print(f"latentdiff train: error: {error}", file=sys.stderr)
        return EXIT_TRAINING_STOPPED
    for path in [result.model_dir, result.model_file, *result.lora_paths]:
        if path:
            print(path)
    return 0
