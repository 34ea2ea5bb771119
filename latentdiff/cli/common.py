"""What every command shares: the parser class, model options, logging, exit codes, and the default model.

User mistakes surface from the library as ValueError with a one-line message; :func:`latentdiff.cli.main`
prints it and exits with :data:`EXIT_USAGE`.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit code 2), like every other user mistake."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    from ..models import DEFAULT_MODEL

    p.add_argument("--model", default=None, help="a diffusers-layout model folder, a hub id in the local cache, or a "
                   f"single .safetensors/.ckpt checkpoint file (SD 1.x/2.x; default: {DEFAULT_MODEL})")
    p.add_argument("--vae", default=None, metavar="PATH",
                   help="replace the model's VAE: a diffusers VAE folder or a VAE .safetensors file")
    p.add_argument("--prediction-type", default=None, choices=["epsilon", "v_prediction"],
                   help="override the model's prediction type (an SD 2.x 768-v file without its .yaml needs "
                        "v_prediction)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights and compute dtype (auto: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = CUDA when available")
    p.add_argument("--allow-pickle", action="store_true", help="also load .bin (pickle) weights; only for files you trust")


def sampler_names() -> str:
    """The registry's sampler names, for --sampler help."""
    from ..core.samplers import SAMPLERS

    names = list(SAMPLERS)
    return ", ".join(names[:-1]) + " or " + names[-1]


def check_eta_given(eta, sampler: str) -> None:
    """A given --eta means DDIM's η; with a sampler that does not take it, it would be ignored, so say so instead."""
    from ..core.samplers import SAMPLERS, get_sampler

    if eta is not None and not get_sampler(sampler).takes_eta:
        takers = " or ".join(s.name for s in SAMPLERS.values() if s.takes_eta)
        raise ValueError(f"--eta sets DDIM's η but the sampler is {sampler!r}; drop --eta or use --sampler {takers}")


def resolve_model(model):
    from ..models import DEFAULT_MODEL, ModelError

    if model is not None:
        return model
    if not DEFAULT_MODEL.is_dir():
        raise ModelError(f"the offline default model is not in {DEFAULT_MODEL}; build it with `latentdiff shapes "
                         "build` or pass --model PATH to a diffusers-layout model folder")
    return DEFAULT_MODEL
