"""A1111's txt2img / img2img requests translated to our settings (validated, within the server's limits), and
the ``info`` JSON A1111 answers with (``Processed.js()`` in ``modules/processing.py``).

Every field the server cannot honour is named in ``info["warnings"]``; nothing is dropped silently. A mistake
(an unknown sampler, a size over the limit, a negative step count) is a ValueError with a one-line message,
which the app answers with HTTP 422.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from typing import Optional

from PIL import Image, ImageOps

from .. import __version__
from ..core.samplers import SAMPLERS, check_strength, get_sampler
from ..pipelines import GenerationConfig, Generated, Pipeline
from ..pipelines.hires import check_hires, hires_size
from ..pipelines.image_input import RESAMPLE
from ..pipelines.parameters import A1111_SAMPLERS, format_parameters, settings_from_parameters
from .config import ServerConfig
from .schemas import MASK_ONLY, NOT_HONOURED, GenerationRequest, Img2ImgRequest, Txt2ImgRequest

MAX_PROMPT = 20_000  # characters of a prompt or negative prompt (≈ 60 of the text encoder's windows)
MAX_SEED = 2**32 - 1  # A1111 draws random seeds below 2**32
HIRES_STRENGTH = 0.75  # A1111's txt2img denoising_strength default
UPSCALERS = {"latent": "latent", "lanczos": "lanczos"}  # A1111's hr_upscaler (lower case) → ours


@dataclass
class Work:
    """One generation request, translated and validated: what its job runs."""

    kind: str  # txt2img, img2img or inpaint
    prompt: str
    cfg: GenerationConfig  # num_images = batch_size, seed = the first image's
    n_iter: int = 1
    hires: Optional[dict] = None  # hires_fix's scale, strength, hires_steps, upscaler
    strength: Optional[float] = None  # img2img / inpaint
    image: Optional[Image.Image] = None
    mask: Optional[Image.Image] = None
    mask_blur: Optional[float] = None
    warnings: list[str] = field(default_factory=list)
    save: bool = False
    send: bool = True
    steps_per_batch: int = 0  # sampling steps of one batch, all passes


def sampler_of(name: Optional[str], scheduler: Optional[str]) -> tuple[Optional[str], list[str]]:
    """(our sampler or None for the model's, warnings) for an A1111 sampler name and schedule type; our own names
    are accepted too. A ValueError for a sampler we do not have."""
    if name is None or not name.strip():
        return None, ([f"scheduler={scheduler!r} ignored: it applies to a sampler_name"]
                      if scheduler and scheduler.strip().lower() != "automatic" else [])
    if name in SAMPLERS:
        return name, []
    fields = {"Sampler": name, **({"Schedule type": scheduler} if scheduler else {})}
    found, unhonoured = settings_from_parameters(fields)
    if "sampler" not in found:
        names = sorted({a for a, _ in A1111_SAMPLERS.values()})
        raise ValueError(f"sampler_name={name!r} is not one of this server's samplers: {', '.join(names)} (with "
                         "scheduler Karras or SGM Uniform for DPM++); see GET /sdapi/v1/samplers")
    return found["sampler"], unhonoured


def not_honoured(req, mask: bool = False) -> list[str]:
    """Warnings for the request's fields that are not ours: A1111's with a value other than 'off', and unknown."""
    out = []
    for key, value in (req.model_extra or {}).items():
        if key in MASK_ONLY and not mask:
            continue
        off = NOT_HONOURED.get(key, MASK_ONLY.get(key))
        if off is None:
            out.append(f"unknown field {key!r} ignored")
        elif off and value not in off:
            out.append(f"{key}={json.dumps(value)} is not supported here; ignored")
    return out


def check_limits(config: ServerConfig, width: int, height: int, steps: int, images: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if value > config.max_size:
            raise ValueError(f"{name}={value} is over this server's limit of {config.max_size} pixels a side "
                             f"(max_size); ask for at most {config.max_size}")
    if not 1 <= steps <= config.max_steps:
        raise ValueError(f"steps={steps} must be between 1 and {config.max_steps} (this server's max_steps)")
    if images > config.max_batch:
        raise ValueError(f"batch_size × n_iter = {images} images is over this server's limit of {config.max_batch} "
                         "a request (max_batch); ask for fewer")


def _finite(name: str, value: Optional[float]) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name}={value} must be a finite number")


def base_settings(req: GenerationRequest, pipe: Pipeline, config: ServerConfig, clip_skip: Optional[int],
                  size: tuple[Optional[int], Optional[int]]) -> tuple[GenerationConfig, list[str]]:
    """The settings of either kind of request, validated by the pipeline and the server's limits."""
    warnings = []
    for name in ("prompt", "negative_prompt"):
        if len(getattr(req, name) or "") > MAX_PROMPT:
            raise ValueError(f"{name} has {len(getattr(req, name))} characters, more than this server takes "
                             f"({MAX_PROMPT}); shorten it")
    for name in ("cfg_scale", "eta"):
        _finite(name, getattr(req, name))
    if req.batch_size < 1 or req.n_iter < 1:
        raise ValueError(f"batch_size={req.batch_size} and n_iter={req.n_iter} must each be at least 1")
    if (req.seed is not None and req.seed < -1) or (req.seed or 0) > MAX_SEED:
        raise ValueError(f"seed={req.seed} must be -1 (random) or between 0 and {MAX_SEED}")
    sampler, said = sampler_of(req.sampler_name or req.sampler_index, req.scheduler)
    warnings += said
    overrides = dict(req.override_settings or {})
    skip = overrides.pop("CLIP_stop_at_last_layers", None)
    if skip is not None and (isinstance(skip, bool) or not isinstance(skip, int)):
        raise ValueError(f"override_settings.CLIP_stop_at_last_layers={skip!r} must be a whole number >= 1")
    wanted = overrides.pop("sd_model_checkpoint", None)
    if wanted is not None:
        warnings.append(f"override_settings.sd_model_checkpoint={wanted!r} ignored: switch models with POST "
                        "/sdapi/v1/options")
    warnings += [f"override_settings.{key} is not supported here; ignored" for key in overrides]
    eta = None
    if req.eta is not None:
        if get_sampler(sampler or pipe.defaults.sampler).takes_eta:
            eta = req.eta
        elif req.eta != 1.0:
            warnings.append(f"eta={req.eta} ignored: it is DDIM's η here (the ancestral samplers use 1)")
    seed = random.randint(0, MAX_SEED) if req.seed in (None, -1) else req.seed
    steps = req.steps if req.steps is not None else pipe.defaults.steps
    check_limits(config, size[1] or 0, size[0] or 0, steps, req.batch_size * req.n_iter)
    cfg = pipe.settings(negative_prompt=req.negative_prompt, steps=steps, guidance=req.cfg_scale, sampler=sampler,
                        eta=eta, seed=seed, num_images=req.batch_size, height=size[0], width=size[1],
                        clip_skip=skip if skip is not None else clip_skip)
    check_limits(config, cfg.width, cfg.height, cfg.steps, req.batch_size * req.n_iter)
    return cfg, warnings


def txt2img_work(req: Txt2ImgRequest, pipe: Pipeline, config: ServerConfig,
                 clip_skip: Optional[int] = None) -> Work:
    """The job of a txt2img request (hires fix when ``enable_hr``)."""
    cfg, warnings = base_settings(req, pipe, config, clip_skip, (req.height, req.width))
    warnings += not_honoured(req)
    work = Work("txt2img", req.prompt, cfg, req.n_iter, warnings=warnings, save=req.save_images,
                send=req.send_images, steps_per_batch=cfg.steps)
    if req.enable_hr:
        _finite("hr_scale", req.hr_scale)
        strength = HIRES_STRENGTH if req.denoising_strength is None else req.denoising_strength
        upscaler = _upscaler(req.hr_upscaler, warnings)
        hires_steps = req.hr_second_pass_steps or None
        check_hires(req.hr_scale, strength, hires_steps, upscaler)
        height, width = hires_size(cfg, req.hr_scale, pipe.components.vae_scale_factor)
        check_limits(config, width, height, hires_steps or cfg.steps, 1)
        work.hires = dict(scale=req.hr_scale, strength=strength, hires_steps=hires_steps, upscaler=upscaler)
        work.steps_per_batch += check_strength(strength, hires_steps or cfg.steps)
    return work


def _upscaler(name: Optional[str], warnings: list[str]) -> str:
    if name is None or not name.strip():
        return "latent"
    key = name.strip().lower()
    if key in UPSCALERS:
        return UPSCALERS[key]
    if key.startswith("latent"):
        warnings.append(f"hr_upscaler={name!r} is done as 'Latent' here (bilinear)")
        return "latent"
    warnings.append(f"hr_upscaler={name!r} is not ours; 'Lanczos' used (ours: Latent, Lanczos)")
    return "lanczos"


def img2img_work(req: Img2ImgRequest, pipe: Pipeline, config: ServerConfig, image: Image.Image,
                 mask: Optional[Image.Image] = None, clip_skip: Optional[int] = None) -> Work:
    """The job of an img2img request (inpainting when a mask is given). ``image`` and ``mask`` are decoded."""
    warnings = []
    if len(req.init_images) > 1:
        warnings.append(f"init_images has {len(req.init_images)} images; only the first is used")
    f = pipe.components.vae_scale_factor
    _finite("denoising_strength", req.denoising_strength)
    if req.resize_mode == 0 and req.width and req.height and image.size != (req.width, req.height):
        image = image.resize((req.width, req.height), RESAMPLE)  # A1111's 'Just resize': stretched
    elif req.resize_mode not in (0, 1):
        warnings.append(f"resize_mode={req.resize_mode} is not supported; the image is covered and center-cropped "
                        "(resize_mode 1)")
    if min(image.size) < f:
        raise ValueError(f"init_images[0] is {image.width}×{image.height} pixels, smaller than the VAE factor {f}; "
                         "send a larger image")
    size = (req.height or image.height // f * f, req.width or image.width // f * f)
    cfg, said = base_settings(req, pipe, config, clip_skip, size)
    warnings += said + not_honoured(req, mask=mask is not None)
    work = Work("img2img", req.prompt, cfg, req.n_iter, strength=req.denoising_strength, image=image,
                warnings=warnings, save=req.save_images, send=req.send_images)
    if mask is not None:
        if req.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        work.kind, work.mask = "inpaint", mask
        work.mask_blur = 4.0 if req.mask_blur is None else req.mask_blur
        _finite("mask_blur", work.mask_blur)
        if not work.mask_blur >= 0:
            raise ValueError(f"mask_blur={work.mask_blur} must be >= 0 pixels")
        full = req.denoising_strength == 1.0
        work.steps_per_batch = cfg.steps if full else check_strength(req.denoising_strength, cfg.steps)
    else:
        work.steps_per_batch = check_strength(req.denoising_strength, cfg.steps)
    return work


def info_json(work: Work, results: list[Generated], pipe: Pipeline, model_name: str, timestamp: str,
              interrupted: bool) -> str:
    """A1111's ``info``: the run's settings, every image's seed and parameters text, plus ``warnings`` and
    ``interrupted``."""
    cfg, n = work.cfg, len(results)
    sampler, schedule = A1111_SAMPLERS.get(cfg.sampler, (cfg.sampler, None))
    strength = work.hires["strength"] if work.hires else work.strength
    info = {
        "prompt": work.prompt, "all_prompts": [work.prompt] * n,
        "negative_prompt": cfg.negative_prompt, "all_negative_prompts": [cfg.negative_prompt] * n,
        "seed": cfg.seed, "all_seeds": [r.params.get("seed", cfg.seed + i) for i, r in enumerate(results)],
        "subseed": -1, "all_subseeds": [-1] * n, "subseed_strength": 0,
        "width": cfg.width, "height": cfg.height, "sampler_name": sampler, "scheduler": schedule or "Automatic",
        "cfg_scale": cfg.guidance, "steps": cfg.steps, "batch_size": cfg.num_images, "n_iter": work.n_iter,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model_name, "sd_model_hash": pipe.model_hash() or None, "sd_vae_name": None,
        "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": strength,
        "extra_generation_params": {"Schedule type": schedule} if schedule else {},
        "index_of_first_image": 0, "infotexts": [format_parameters(r.params) for r in results], "styles": [],
        "job_timestamp": timestamp, "clip_skip": cfg.clip_skip,
        "is_using_inpainting_conditioning": work.kind == "inpaint" and pipe.components.unet.config.in_channels > 4,
        "version": f"latentdiff {__version__}", "warnings": work.warnings, "interrupted": interrupted,
    }
    return json.dumps(info)


def batch_settings(work: Work, k: int) -> GenerationConfig:
    """Batch k's settings: A1111 numbers the seeds across batches (batch k starts at seed + k·batch_size)."""
    return replace(work.cfg, seed=work.cfg.seed + k * work.cfg.num_images)
