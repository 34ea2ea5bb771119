"""What a job does on the worker thread: generate (txt2img, hires fix, img2img, inpaint) batch by batch, edit a
real image, switch models; an interrupted job decodes the latents it has. Images asked to be saved are written
with the atomic :func:`~latentdiff.pipelines.images.save_png`, so a killed server leaves no partial file (and a
stale temporary file from one is removed at start-up)."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
from PIL import Image

from ..core.samplers import plan
from ..edit.attention import AttentionController
from ..edit.inversion import METHODS, invert, sample_edit
from ..models import decode_latents, to_uint8
from ..pipelines import Generated, Pipeline
from ..pipelines.image_input import default_edit_size, encode_image, fit_image
from ..pipelines.images import save_png
from .a1111 import Work, batch_settings, check_limits, info_json
from .codec import png_bytes, to_base64
from .config import ServerConfig
from .schemas import EditRequest
from .worker import Interrupted, Job

log = logging.getLogger("latentdiff.serve")
PARTIAL_GLOB = ".*.png.*.tmp"  # save_png's temporary names: .<name>.png.<random>.tmp


@dataclass
class Outcome:
    """A finished job: base64 PNG files (with their parameters), the info JSON, whether it was interrupted."""

    images: list[str]
    info: str
    interrupted: bool = False
    saved: list[Path] = field(default_factory=list)


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`save_png` leaves (a server killed mid-write)."""
    removed = []
    for path in Path(folder).glob(PARTIAL_GLOB) if Path(folder).is_dir() else ():
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def run_generation(job: Job, work: Work, pipe: Pipeline, model_name: str, outputs: Optional[Path]) -> Outcome:
    """Every batch of ``work`` (A1111's n_iter), each image i of batch k with seed + k·batch_size + i."""
    timestamp = time.strftime("%Y%m%d%H%M%S")
    results: list[Generated] = []
    interrupted = False
    for k in range(work.n_iter):
        job.begin_batch(k)
        cfg = batch_settings(work, k)
        try:
            results += _batch(pipe, work, cfg, job.callback)
        except Interrupted as stop:
            results += _partial(pipe, work, cfg, stop)
            interrupted = True
            break
    saved = save_images(results, outputs, timestamp) if work.save and outputs is not None else []
    images = [to_base64(png_bytes(r.image, r.params)) for r in results] if work.send else []
    return Outcome(images, info_json(work, results, pipe, model_name, timestamp, interrupted), interrupted, saved)


def _batch(pipe: Pipeline, work: Work, cfg, callback) -> list[Generated]:
    if work.kind == "txt2img" and work.hires:
        h = work.hires
        return pipe.hires_fix(work.prompt, scale=h["scale"], strength=h["strength"], hires_steps=h["hires_steps"],
                              upscaler=h["upscaler"], settings=cfg, callback=callback)
    if work.kind == "txt2img":
        return pipe.generate(work.prompt, settings=cfg, callback=callback)
    if work.kind == "img2img":
        return pipe.img2img(work.prompt, work.image, strength=work.strength, settings=cfg, callback=callback)
    return pipe.inpaint(work.prompt, work.image, work.mask, strength=work.strength, mask_blur=work.mask_blur,
                        settings=cfg, callback=callback)


def _partial(pipe: Pipeline, work: Work, cfg, stop: Interrupted) -> list[Generated]:
    """The interrupted batch's images: its current prediction of the final latents, decoded."""
    f = pipe.components.vae_scale_factor
    latents = stop.latents  # (B, C, h, w): a hires second pass is larger than cfg's size
    size = replace(cfg, height=latents.shape[2] * f, width=latents.shape[3] * f)
    seeds = [cfg.seed + i for i in range(cfg.num_images)]
    extra = {"strength": work.strength} if work.strength is not None else {}
    return pipe.decode(latents, [work.prompt] * cfg.num_images, seeds, size, interrupted_at_step=stop.step, **extra)


def save_images(results: list[Generated], folder: Path, timestamp: str) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    return [save_png(r.image, folder / f"{timestamp}-{tag}-{i:02d}-{r.params.get('seed', 0)}.png", r.params)
            for i, r in enumerate(results)]


# --- editing ------------------------------------------------------------------------------------------------------


@dataclass
class EditWork:
    image: Image.Image
    request: EditRequest
    steps: int
    controller: "ReportingController"


class ReportingController(AttentionController):
    """Prompt-to-prompt control that also reports each sampling step to the job and stops it when told to."""

    job: Optional[Job] = None

    def after_step(self, i: int, latents: torch.Tensor) -> torch.Tensor:
        latents = super().after_step(i, latents)  # (2, C, h, w): [source, edited]
        if self.job is not None:
            self.job.callback({"x": latents[1:]})  # counts the step; raises Interrupted once told to stop
        return latents


def edit_work(req: EditRequest, pipe: Pipeline, config: ServerConfig, image: Image.Image) -> EditWork:
    """Validate an edit request (everything before the slow inversion), as ``latentdiff edit`` does."""
    c = pipe.components
    if c.dtype != torch.float32:
        raise ValueError(f"editing runs in fp32 (null-text optimization needs it) but the model is loaded in "
                         f"{str(c.dtype).removeprefix('torch.')}; start the server with --dtype fp32 to edit")
    if req.method not in METHODS:
        raise ValueError(f"method={req.method!r} is not supported; choose one of {', '.join(map(repr, METHODS))}")
    for name in ("guidance", "cross_replace", "self_replace"):
        value = getattr(req, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name}={value} must be a finite number")
    steps = req.steps if req.steps is not None else pipe.defaults.steps
    height, width = default_edit_size(c)
    check_limits(config, width, height, steps, 1)
    plan("ddim", c.schedule, steps)
    controller = ReportingController(c.tokenizer, req.source_prompt, req.target_prompt, steps,
                                     cross_replace=req.cross_replace, self_replace=req.self_replace)
    fitted, _ = fit_image(image, (height, width), multiple_of=c.vae_scale_factor)
    return EditWork(fitted, req, steps, controller)


def run_edit(job: Job, work: EditWork, pipe: Pipeline) -> Outcome:
    """Invert the image with the source prompt, sample the target prompt under prompt-to-prompt control."""
    c, req = pipe.components, work.request
    inversion = invert(c, encode_image(c, work.image), req.source_prompt, method=req.method, steps=work.steps,
                       guidance=None if req.method == "ddpm" else req.guidance, seed=req.seed)
    work.controller.job = job
    interrupted = False
    with torch.no_grad(), work.controller.installed(c.unet):
        try:
            latents = sample_edit(c, inversion, req.target_prompt, guidance=req.guidance,
                                  controller=work.controller)[1:]
        except Interrupted as stop:
            latents, interrupted = stop.latents, True
        (edited,) = (Image.fromarray(a) for a in to_uint8(decode_latents(c, latents)))
    params = dict(inversion.settings, seed=req.seed, target_prompt=req.target_prompt, mode=work.controller.mode,
                  cross_replace=req.cross_replace, self_replace=req.self_replace, model=str(c.path),
                  output="edit", **({"interrupted_at_step": job.step} if interrupted else {}))
    info = json.dumps({"method": req.method, "steps": work.steps, "source_prompt": req.source_prompt,
                       "target_prompt": req.target_prompt, "mode": work.controller.mode,
                       "warnings": [f"unknown field {k!r} ignored" for k in req.model_extra or {}],
                       "interrupted": interrupted})
    return Outcome([to_base64(png_bytes(edited, params))], info, interrupted)


# --- models ---------------------------------------------------------------------------------------------------------


def load_pipeline(path: Path, dtype: str = "auto", device: str = "auto") -> Pipeline:
    """A model folder loaded for serving: safetensors weights only (never pickle), networks frozen."""
    return Pipeline.from_pretrained(path, dtype=dtype, device=device, allow_pickle=False)
