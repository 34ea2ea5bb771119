"""Text → image: encode prompts, draw seeded latents, sample with guidance, decode. No diffusion math here."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from PIL import Image

from .dpm_solver import dpm_timesteps, karras_timesteps, sample_dpmpp_2m
from .euler import euler_timesteps, initial_noise_scale, sample_euler
from .guidance import CFGDenoiser, UNetModel
from .models import Components, decode_latents, encode_prompts, load_components, save_components, to_uint8
from .sampling import randn, sample_ddim, sample_ddpm
from .schedule import Schedule

# DPM-Solver++ 2M (SDE) is diffusers' DPMSolverMultistepScheduler; "-karras": with use_karras_sigmas=True;
# euler, euler-a: EulerDiscreteScheduler, EulerAncestralDiscreteScheduler
SAMPLERS = ("ddim", "ddpm", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-2m-karras", "dpmpp-2m-sde-karras", "euler", "euler-a")
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

    @classmethod
    def for_model(cls, path: Optional[Path]) -> "GenerationConfig":
        file = path / GENERATION_CONFIG if path is not None else None
        if file is None or not file.is_file():
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(file.read_text()).items() if k in known})


def sampler_plan(cfg: "GenerationConfig", schedule: Schedule) -> tuple:
    """(sampler function, its timesteps, its keyword arguments) for a sampler name, timesteps spaced as the
    diffusers scheduler of that name spaces them."""
    if cfg.sampler == "ddim":
        return sample_ddim, schedule.timesteps(cfg.steps), {"eta": cfg.eta}
    if cfg.sampler == "ddpm":
        return sample_ddpm, schedule.timesteps(cfg.steps), {}
    if cfg.sampler.startswith("euler"):
        timesteps, sigmas = euler_timesteps(schedule, cfg.steps)
        return sample_euler, timesteps, {"sigmas": sigmas, "ancestral": cfg.sampler == "euler-a",
                                         "noise_scale": initial_noise_scale(schedule.timestep_spacing, sigmas)}
    extra = {"sde": "-sde" in cfg.sampler}
    if cfg.sampler.endswith("-karras"):
        timesteps, extra["sigmas"] = karras_timesteps(schedule, cfg.steps)
    else:
        timesteps = dpm_timesteps(cfg.steps, schedule.num_train_timesteps, schedule.timestep_spacing,
                                  schedule.steps_offset)
    return sample_dpmpp_2m, timesteps, extra


@dataclass
class Generated:
    """One image and everything needed to generate it again on its own."""

    image: Image.Image
    params: dict = field(default_factory=dict)


class Pipeline:
    """Stable-Diffusion-style text-to-image over our samplers; same seed, same image as diffusers."""

    def __init__(self, components: Components, defaults: Optional[GenerationConfig] = None):
        self.components = components
        self.defaults = defaults or GenerationConfig.for_model(components.path)
        self.model_name = str(components.path) if components.path is not None else "<in memory>"

    @classmethod
    def from_pretrained(cls, model: Union[str, os.PathLike], *, dtype="auto", device="auto",
                        allow_pickle: bool = False, lora: Optional[Union[str, os.PathLike]] = None,
                        lora_scale: float = 1.0) -> "Pipeline":
        """Load a model folder; ``lora`` (a diffusers/kohya LoRA file or folder) is fused into the UNet."""
        components = load_components(model, dtype=dtype, device=device, allow_pickle=allow_pickle)
        pipe = cls(components)
        if lora is not None:
            from .lora import load_lora

            load_lora(components.unet, lora, lora_scale)
            pipe.model_name += f" + LoRA {Path(lora).resolve()} x{lora_scale:g}"
        return pipe

    def save_pretrained(self, folder: Union[str, os.PathLike]) -> Path:
        folder = save_components(self.components, folder)
        if self.defaults != GenerationConfig():
            (folder / GENERATION_CONFIG).write_text(json.dumps(asdict(self.defaults), indent=2))
        return folder

    def settings(self, **overrides) -> GenerationConfig:
        """The model's defaults with the given (non-None) overrides, validated."""
        cfg = replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})
        factor = self.components.vae_scale_factor
        cfg.height = cfg.height or self.components.unet.config.sample_size * factor
        cfg.width = cfg.width or self.components.unet.config.sample_size * factor
        if cfg.sampler not in SAMPLERS:
            raise ValueError(f"sampler={cfg.sampler!r} is not supported; choose one of {', '.join(map(repr, SAMPLERS))}")
        for name in ("height", "width"):
            value = getattr(cfg, name)
            if value <= 0 or value % factor:
                near = max(factor, round(value / factor) * factor)
                raise ValueError(f"{name}={value} is not a positive multiple of the VAE factor {factor}; use e.g. {near}")
        if cfg.num_images < 1:
            raise ValueError(f"num_images={cfg.num_images} must be at least 1")
        if not cfg.eta >= 0:
            raise ValueError(f"eta={cfg.eta!r} must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like)")
        sampler_plan(cfg, self.components.schedule)  # validates steps
        return cfg

    def generate(self, prompt: Union[str, Sequence[str]], *, progress: bool = False, callback=None,
                 **overrides) -> list[Generated]:
        """Images for each prompt × num_images; image i uses seed + i (reproducible alone)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompts given; pass at least one prompt")
        cfg = self.settings(**overrides)
        c = self.components
        prompts = [p for p in prompts for _ in range(cfg.num_images)]  # (B,) prompt-major
        seeds = [cfg.seed + i for i in range(len(prompts))]
        generators = [torch.Generator().manual_seed(s) for s in seeds]  # CPU, as diffusers with a CPU generator

        cond = encode_prompts(c, prompts)  # (B, L, D)
        uncond = encode_prompts(c, [cfg.negative_prompt] * len(prompts)) if cfg.guidance != 1 else None
        shape = (len(prompts), c.unet.config.in_channels, cfg.height // c.vae_scale_factor,
                 cfg.width // c.vae_scale_factor)
        latents = randn(shape, generators, cond.dtype, c.device)  # (B, C, H/f, W/f)
        schedule = c.schedule
        denoiser = CFGDenoiser(UNetModel(c.unet), cond, uncond, cfg.guidance, cfg.guidance_rescale)
        sampler, timesteps, extra = sampler_plan(cfg, schedule)
        with torch.inference_mode():
            latents = sampler(denoiser, latents, schedule, timesteps, generator=generators, callback=callback,
                              disable_progress=not progress, **extra)
            pixels = to_uint8(decode_latents(c, latents))

        out = []
        for p, s, array in zip(prompts, seeds, pixels):
            params = dict(asdict(cfg), prompt=p, seed=s, num_images=1, model=self.model_name,
                          dtype=str(c.dtype).removeprefix("torch."))
            out.append(Generated(Image.fromarray(array), params))
        return out

    def __call__(self, prompt: Union[str, Sequence[str]], **kwargs) -> list[Image.Image]:
        return [g.image for g in self.generate(prompt, **kwargs)]
