"""Generation settings: every default in one place, a model folder's own defaults, and their validation."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional

from ..core import samplers
from ..core.guidance import check_rescale
from ..models import Components
from .prompt_syntax import SYNTAXES
from .prompts import check_clip_skip

GENERATION_CONFIG = "latentdiff_generation.json"  # optional per-model defaults in the model folder


@dataclass
class GenerationConfig:
    """Every generation default, in one place. A model folder may override them in latentdiff_generation.json."""

    negative_prompt: str = ""
    steps: int = 50
    guidance: float = 7.5
    guidance_rescale: float = 0.0
    sampler: str = "ddim"
    eta: float = 0.0
    seed: int = 0
    num_images: int = 1
    height: Optional[int] = None  # None: the UNet's sample_size × the VAE factor
    width: Optional[int] = None
    clip_skip: int = 1  # A1111 numbering: 1 = the text encoder's output, 2 = its penultimate layer, …
    prompt_syntax: str = "a1111"  # a1111: (emphasis:1.2), [less], BREAK; plain: the text as it is

    @classmethod
    def for_model(cls, path: Optional[Path]) -> "GenerationConfig":
        file = path / GENERATION_CONFIG if path is not None else None
        if file is None or not file.is_file():
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(file.read_text()).items() if k in known})


def resolve_settings(defaults: GenerationConfig, components: Components,
                     **overrides) -> tuple[GenerationConfig, samplers.Plan]:
    """``defaults`` with the given (non-None) overrides, validated (size and count here; sampler, steps and η by
    the sampler registry's plan, which is returned; guidance rescale by the guidance wrapper's rule)."""
    cfg = replace(defaults, **{k: v for k, v in overrides.items() if v is not None})
    factor = components.vae_scale_factor
    cfg.height = cfg.height or components.unet.config.sample_size * factor
    cfg.width = cfg.width or components.unet.config.sample_size * factor
    for name in ("height", "width"):
        value = getattr(cfg, name)
        if value <= 0 or value % factor:
            near = max(factor, round(value / factor) * factor)
            raise ValueError(f"{name}={value} is not a positive multiple of the VAE factor {factor}; use e.g. {near}")
    check_rescale(cfg.guidance_rescale)
    check_clip_skip(cfg.clip_skip, components.text_encoder)
    if cfg.prompt_syntax not in SYNTAXES:
        raise ValueError(f"prompt_syntax={cfg.prompt_syntax!r} is not one of {', '.join(map(repr, SYNTAXES))}")
    if cfg.num_images < 1:
        raise ValueError(f"num_images={cfg.num_images} must be at least 1")
    return cfg, samplers.plan(cfg.sampler, components.schedule, cfg.steps, cfg.eta)
