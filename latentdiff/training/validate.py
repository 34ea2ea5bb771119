"""Every training config value checked before any side effect (no Accelerator, no folder, no model load).

:func:`validate` raises a one-line ValueError that names the key as ``section.key=value`` and says what to
do. It only reads: the model folder's small JSON configs, ``model.unet_config`` and ``model.scheduler``, and
whether paths exist; it writes nothing and loads no weights. Each rule lives here once; ``train()`` calls
it first.
"""

from __future__ import annotations

import json
import math
import os
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from ..core.schedule import PREDICTION_TYPES, Schedule, check_choice, check_steps
from ..models import ModelError, check_model_folder, resolve_model_path
from ..models.device import check_mixed_precision
from ..models.folder import check_weights
from ..models.lora import LORA_FORMATS
from .config import Config
from .data import CROPS
from .pretrained import pretrained_folder

EXPORT_FORMATS = ("diffusers", "single_file", "both")  # train.export_format

# diffusers.optimization.SchedulerType, less piecewise_constant (it needs step_rules, which no key gives)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


def read_scheduler_overrides(path: Optional[str]) -> dict:
    """The scheduler-config entries of ``model.scheduler`` (a JSON or YAML mapping); {} when unset."""
    if path is None:
        return {}
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"model.scheduler={path!r} cannot be read: {error.strerror}; pass a JSON/YAML file") from None
    except yaml.YAMLError:
        raise ValueError(f"model.scheduler={path!r} is not valid JSON/YAML; fix it or unset model.scheduler") from None
    if not isinstance(raw, dict):
        raise ValueError(f"model.scheduler={path!r} must hold a mapping of scheduler-config keys, e.g. "
                         '{"rescale_betas_zero_snr": true}')
    return {k: v for k, v in raw.items() if not k.startswith("_")}  # not _class_name, _diffusers_version


def validate(config: Config) -> None:
    """Raise a one-line ValueError naming the first config value that cannot work; otherwise do nothing."""
    _check_types(config)
    _check_numbers(config)
    _check_choices(config)
    model = _check_model(config)
    schedule = _check_schedule(config, model)
    _check_data(config, model)
    _check_paths(config)
    t = config.train
    if t.validate_every and t.validation_prompts:
        try:
            check_steps(t.validation_steps, schedule.num_train_timesteps)
        except ValueError:
            _fail("train.validation_steps", t.validation_steps,
                  f"must be an integer between 1 and the schedule's {schedule.num_train_timesteps} training steps "
                  "when validating; lower it or set train.validate_every=0")


def _fail(key: str, value: Any, rule: str) -> typing.NoReturn:
    raise ValueError(f"{key}={value!r} {rule}")


# --- types: a Config built in code (not by load_config) may hold anything -------------------------------

def _check_types(config: Config) -> None:
    for section in fields(config):
        part = getattr(config, section.name)
        for name, hint in typing.get_type_hints(type(part)).items():
            value, args = getattr(part, name), typing.get_args(hint)
            optional = type(None) in args
            base = next(a for a in args if a is not type(None)) if args else hint
            if value is None and optional:
                continue
            if base is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            elif base is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, base)
            if base is list and ok and not all(isinstance(v, str) for v in value):
                _fail(f"{section.name}.{name}", value, "must be a list of texts")
            if not ok:
                kind = "a finite number" if base is float else f"of type {base.__name__}"
                _fail(f"{section.name}.{name}", value, f"must be {kind}{' or null' if optional else ''}")


# --- numbers: (key, holds, rule); `holds` gets the value (never None unless the key is optional) --------

def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _at_least_one(v) -> bool:
    return v >= 1


NUMBER_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("data.resolution", _at_least_one, "must be >= 1 pixels (e.g. 512)"),
    ("data.encode_batch_size", _at_least_one, "must be >= 1"),
    ("data.max_chunks", _at_least_one, "must be >= 1 (chunks of the text encoder's window per caption)"),
    ("train.batch_size", _at_least_one, "must be >= 1"),
    ("train.gradient_accumulation_steps", _at_least_one, "must be >= 1"),
    ("train.max_steps", _at_least_one, "must be >= 1"),
    ("train.checkpoint_every", _at_least_one, "must be >= 1"),
    ("train.keep_checkpoints", _non_negative, "must be >= 0 (the newest checkpoints kept; 0 keeps every one)"),
    ("train.log_every", _at_least_one, "must be >= 1"),
    ("train.validate_every", _non_negative, "must be >= 0 (0 disables validation)"),
    ("train.lr_warmup_steps", _non_negative, "must be >= 0"),
    ("train.learning_rate", _positive, "must be > 0 (e.g. 1e-4)"),
    ("train.adam_beta1", lambda v: 0 <= v < 1, "must be in [0, 1) (e.g. 0.9)"),
    ("train.adam_beta2", lambda v: 0 <= v < 1, "must be in [0, 1) (e.g. 0.999)"),
    ("train.adam_epsilon", _positive, "must be > 0 (e.g. 1e-8)"),
    ("train.adam_weight_decay", _non_negative, "must be >= 0 (0 disables weight decay)"),
    ("train.max_grad_norm", _non_negative, "must be >= 0 (0 disables clipping)"),
    ("train.caption_dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("train.snr_gamma", lambda v: v is None or v > 0, "must be > 0 (e.g. 5.0), or null to disable min-SNR weighting"),
    ("train.noise_offset", _non_negative, "must be >= 0 (0 disables the noise offset)"),
    ("train.ema_decay", lambda v: v is None or 0 < v < 1, "must be in (0, 1), or null to disable EMA"),
)
LORA_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (  # only when lora.enabled
    ("lora.rank", _at_least_one, "must be >= 1 (e.g. 4)"),
    ("lora.alpha", _positive, "must be > 0 (e.g. the rank)"),
    ("lora.target_modules", lambda v: len(v) > 0 and all(v), "must name at least one UNet module, e.g. [to_q, to_v]"),
)


def _get(config: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _check_numbers(config: Config) -> None:
    for key, holds, rule in NUMBER_RULES + (LORA_RULES if config.lora.enabled else ()):
        if not holds(_get(config, key)):
            _fail(key, _get(config, key), rule)


def _check_choices(config: Config) -> None:
    m, d, t = config.model, config.data, config.train
    if m.prediction_type is not None:
        check_choice("model.prediction_type", m.prediction_type, PREDICTION_TYPES)
    check_choice("data.crop", d.crop, CROPS)
    check_choice("train.export_format", t.export_format, EXPORT_FORMATS)
    if d.crop == "random" and d.cache:
        raise ValueError("data.crop=random cannot use the latent cache (every crop differs); "
                         "set data.crop=center or data.cache=false")
    if not d.caption_column:
        _fail("data.caption_column", d.caption_column, "must name the metadata column holding captions (e.g. text)")
    check_choice("train.lr_scheduler", t.lr_scheduler, LR_SCHEDULERS)
    check_mixed_precision("train.mixed_precision", t.mixed_precision)
    if config.lora.enabled and m.unet_config:
        raise ValueError("lora.enabled trains adapters on a pretrained UNet; unset model.unet_config")
    if config.lora.enabled:
        check_choice("lora.format", config.lora.format, LORA_FORMATS)
    if config.lora.train_text_encoder and not config.lora.enabled:
        raise ValueError("lora.train_text_encoder=True trains LoRA adapters on the text encoder; set lora.enabled=true "
                         "as well, or lora.train_text_encoder=false")


# --- the model folder, the UNet architecture, the noise schedule: read, never loaded --------------------

def _read_json(path: Path, key: str, value) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        _fail(key, value, f"has an unreadable '{path}' ({error}); repair or re-save the model folder")
    if not isinstance(raw, dict):
        _fail(key, value, f"has '{path}' that is not a JSON object; repair or re-save the model folder")
    return raw


def _check_model(config: Config) -> Path:
    """The resolved model folder, checked to have every component training loads (weights as allowed)."""
    m = config.model
    if not m.pretrained:
        raise ValueError("model.pretrained is required: a diffusers-layout folder with at least vae/, text_encoder/, "
                         "tokenizer/ and scheduler/ (plus unet/ unless model.unet_config is given), or a single "
                         "SD 1.x/2.x checkpoint file")
    try:
        path = resolve_model_path(pretrained_folder(m.pretrained, m.allow_pickle)).resolve()
        check_model_folder(path, need_unet=not m.unet_config)
        for folder in ("vae", "text_encoder") if m.unet_config else ("unet", "vae", "text_encoder"):
            check_weights(path, folder, m.allow_pickle)
    except ModelError as error:
        raise ValueError(f"model.pretrained={m.pretrained!r}: {error}") from None
    if m.unet_config:
        _check_unet_config(m.unet_config, path)
    return path


def _check_unet_config(unet_config: str, model: Path) -> None:
    key = "model.unet_config"
    path = Path(unet_config)
    if not path.is_file():
        _fail(key, unet_config, "does not exist or is not a file; pass a YAML/JSON UNet2DConditionModel config")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        _fail(key, unet_config, f"cannot be read as YAML/JSON ({str(error).splitlines()[0]}); fix the file")
    if not isinstance(raw, dict):
        _fail(key, unet_config, "must hold a mapping of UNet2DConditionModel config keys (block_out_channels, ...)")
    text = _read_json(model / "text_encoder" / "config.json", "model.pretrained", str(model))
    width = text.get("hidden_size")
    if width is not None and raw.get("cross_attention_dim", width) != width:
        _fail(key, unet_config, f"has cross_attention_dim={raw['cross_attention_dim']}, which must equal the text "
                                f"encoder's hidden size {width}; remove it or set it to {width}")


def _check_schedule(config: Config, model: Path) -> Schedule:
    """The schedule training will use: the model's scheduler config, model.scheduler, model.prediction_type."""
    m = config.model
    overrides = read_scheduler_overrides(m.scheduler)
    if "prediction_type" in overrides:
        check_choice(f"prediction_type in model.scheduler '{m.scheduler}'", overrides["prediction_type"],
                     PREDICTION_TYPES)
    base = _read_json(model / "scheduler" / "scheduler_config.json", "model.pretrained", m.pretrained)
    merged = {**base, **overrides, **({"prediction_type": m.prediction_type} if m.prediction_type else {})}
    try:
        return Schedule.from_config(merged)
    except (ValueError, TypeError, KeyError) as error:
        key, value = ("model.scheduler", m.scheduler) if overrides else ("model.pretrained", m.pretrained)
        reason = str(error.args[0]).splitlines()[0] if error.args else type(error).__name__
        _fail(key, value, f"gives an unusable noise schedule: {reason}")


def _check_data(config: Config, model: Path) -> None:
    d = config.data
    if not d.root:
        raise ValueError("data.root is required: a folder of images with metadata.jsonl/csv or .txt captions")
    if not Path(d.root).is_dir():
        _fail("data.root", d.root, "does not exist or is not a folder; pass a folder of images with "
                                   "metadata.jsonl/csv or .txt captions")
    vae = _read_json(model / "vae" / "config.json", "model.pretrained", config.model.pretrained)
    factor = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)  # pixels per latent, as Components says
    if d.resolution % factor:
        _fail("data.resolution", d.resolution, f"must be a multiple of the VAE's downsampling factor {factor} "
                                               f"(e.g. {max(factor, d.resolution // factor * factor)})")


# --- folders that training creates: they must be creatable --------------------------------------------

def _check_creatable(key: str, value: str) -> None:
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        _fail(key, value, "is an existing file; pass a folder (existing or new)")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        _fail(key, value, f"cannot be created: '{ancestor}' is a file; pass another folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        _fail(key, value, f"cannot be written: '{ancestor}' is not writable; pass another folder")


def _check_paths(config: Config) -> None:
    if not config.train.output_dir:
        _fail("train.output_dir", config.train.output_dir, "must name a folder for checkpoints and the result")
    _check_creatable("train.output_dir", config.train.output_dir)
    if config.data.cache and config.data.cache_dir:
        _check_creatable("data.cache_dir", config.data.cache_dir)
