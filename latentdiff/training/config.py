"""Training configuration: typed dataclasses, loaded from YAML, overridable with ``--section.key=value``.

Every default lives here. The resolved configuration is written next to every checkpoint.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


@dataclass
class ModelConfig:
    pretrained: Optional[str] = None  # diffusers-layout folder or single SD checkpoint file: fine-tune its UNet
    unet_config: Optional[str] = None  # YAML/JSON UNet2DConditionModel config: train a UNet from scratch
    prediction_type: Optional[str] = None  # override the scheduler config's (epsilon / v_prediction / sample)
    # JSON/YAML mapping of scheduler-config entries that replace the pretrained model's, e.g. fine-tune on zero
    # terminal SNR: {"rescale_betas_zero_snr": true, "timestep_spacing": "trailing", "prediction_type":
    # "v_prediction"}; the trained model is saved with the merged schedule
    scheduler: Optional[str] = None
    allow_pickle: bool = False
    vae: Optional[str] = None  # another VAE (a diffusers VAE folder or a .safetensors file) for the frozen encoder


@dataclass
class DataConfig:
    root: Optional[str] = None  # folder of images with metadata.jsonl/csv or .txt captions
    caption_column: str = "text"
    resolution: int = 512
    crop: str = "center"  # center | random
    flip: bool = False  # random horizontal flip (both orientations are cached)
    cache: bool = True  # encode latents and text once into an on-disk cache
    cache_dir: Optional[str] = None  # default: <output_dir>/cache
    encode_batch_size: int = 8
    max_chunks: int = 1  # caption windows of the text encoder kept (A1111-style chunks); longer ones are cut


@dataclass
class LoraConfig:
    enabled: bool = False
    rank: int = 4
    alpha: float = 4.0
    target_modules: list = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # also train adapters on the text encoder's attention (q/k/v/out_proj); its captions are then encoded in every
    # step instead of read from the text cache
    train_text_encoder: bool = False
    # diffusers: lora/pytorch_lora_weights.safetensors; kohya: lora/<output_dir name>.safetensors (A1111, ComfyUI);
    # both: the two files
    format: str = "diffusers"


@dataclass
class TrainConfig:
    output_dir: str = "outputs/train"
    seed: int = 0
    batch_size: int = 4  # per process, per micro-step
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000  # optimizer steps
    learning_rate: float = 1e-4
    scale_lr: bool = False  # multiply the LR by batch size × accumulation × processes
    lr_scheduler: str = "constant"  # any name of diffusers.optimization.get_scheduler
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    mixed_precision: str = "no"  # no | fp16 | bf16 (fp16 needs a GPU) | auto (bf16 where the hardware has it)
    gradient_checkpointing: bool = False
    caption_dropout: float = 0.1  # probability of training on the empty prompt, for CFG
    snr_gamma: Optional[float] = None  # min-SNR-γ loss weighting (Hang et al. 2023); 5.0 is the paper's choice
    noise_offset: float = 0.0
    ema_decay: Optional[float] = 0.9999  # None disables EMA
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # the newest K are kept; 0 keeps every one
    log_every: int = 10
    export_format: str = "diffusers"  # diffusers (a model folder) | single_file (model.safetensors, SD layout) | both
    validate_every: int = 0  # 0 disables validation
    validation_prompts: list = field(default_factory=list)
    validation_steps: int = 25
    validation_guidance: float = 5.0
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _coerce(value: Any, annotation, name: str):
    """Convert a YAML/command-line value to the field's type, or raise a ValueError naming the key."""
    hint = annotation if isinstance(annotation, type) else None
    args = typing.get_args(annotation)
    if hint is None and args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is None:
        hint = {"str": str, "int": int, "float": float, "bool": bool, "list": list}.get(str(annotation).split("[")[0])
    try:
        if hint is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if hint is list and isinstance(value, str):
            parsed = yaml.safe_load(value)
            return parsed if isinstance(parsed, list) else [parsed]
        if hint in (int, float) and isinstance(value, str):
            return hint(float(value)) if hint is int and "e" in value.lower() else hint(value)
        if hint is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if hint is str and isinstance(value, (bool, int, float)):  # YAML read `no`/`off` as false, `16` as 16
            return ("yes" if value else "no") if isinstance(value, bool) else str(value)
        if hint is not None and not isinstance(value, hint):
            raise ValueError
        return value
    except (ValueError, TypeError):
        raise ValueError(f"config key {name}={value!r} must be of type {getattr(hint, '__name__', hint)}") from None


def _apply(config: Config, section: str, key: str, value: Any) -> None:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections:
        raise ValueError(f"unknown config section '{section}'; choose one of {', '.join(sections)}")
    target = getattr(config, section)
    hints = typing.get_type_hints(type(target))
    if key not in hints:
        raise ValueError(f"unknown config key '{section}.{key}'; {section} has: {', '.join(hints)}")
    setattr(target, key, _coerce(value, hints[key], f"{section}.{key}"))


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """A Config from a YAML file (sections model/data/lora/train), then ``section.key=value`` overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as error:
            raise ValueError(f"cannot read config '{path}': {error.strerror}; pass an existing YAML file") from None
        except yaml.YAMLError as error:
            raise ValueError(f"config '{path}' is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"config '{path}' must be a mapping of sections (model, data, lora, train)")
        for section, values in raw.items():
            if not isinstance(values, dict):
                raise ValueError(f"config section '{section}' in '{path}' must be a mapping")
            for key, value in values.items():
                _apply(config, section, key, value)
    for item in overrides or []:
        item = item[2:] if item.startswith("--") else item
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override '{item}' must look like --section.key=value (e.g. --train.max_steps=100)")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        _apply(config, section, key, yaml.safe_load(value) if value else value)
    return config
