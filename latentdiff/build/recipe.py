"""`latentdiff shapes build`: the offline default model from nothing, in three stages (LDM's recipe).

0. render the shapes world (train split; a held-out split for reports) — ``configs/shapes/world.yaml``
1. an AutoencoderKL (factor 4), its latent scaling factor = 1/std of latents — ``vae.yaml``
2. a CLIP trained with open_clip; its text tower exported as a transformers CLIPTextModel — ``clip.yaml``
3. a UNet2DConditionModel from scratch with the ordinary trainer on the rendered folder — ``unet.yaml``,
   on the noise schedule of ``scheduler.json`` (a diffusers DDIMScheduler config)
4. optionally, that UNet fine-tuned by the same trainer — ``unet-finetune.yaml`` — on the noise schedule
   of ``scheduler-finetune.json`` (when present; else the same schedule)

Each stage writes into ``workdir`` and is skipped when its output is already there, so an interrupted
build continues. The result is a diffusers-layout folder stored in fp16, plus ``build_report.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import yaml

from ..models.folder import copy_as_fp16, write_encoders_folder
from ..pipelines.settings import GENERATION_CONFIG
from ..shapes.dataset import examples, render_dataset

log = logging.getLogger(__name__)


def _arrays(n: int, seed: int, split: str) -> tuple[np.ndarray, list[str]]:
    images, captions = [], []
    for image, row in examples(n, seed, split):
        images.append(np.asarray(image))
        captions.append(row["text"])
    return np.stack(images), captions


class Recipe:
    """The files of a recipe folder; a file it lacks comes from the folder its ``world.yaml`` names in ``inherit``
    (relative to the recipe), so a variant (e.g. ``configs/shapes-gpu``) holds only what it changes."""

    def __init__(self, folder: Path, _seen: tuple[Path, ...] = ()):
        self.folder = Path(os.path.normpath(folder))
        world = self.folder / "world.yaml"
        if not world.is_file():
            raise ValueError(f"recipe folder '{self.folder}' has no world.yaml; pass one such as configs/shapes")
        if self.folder in _seen:
            raise ValueError(f"recipe '{_seen[0]}' inherits from itself through '{self.folder}'; fix 'inherit'")
        inherit = (yaml.safe_load(world.read_text()) or {}).get("inherit")
        self.parent = Recipe(self.folder / inherit, (*_seen, self.folder)) if inherit else None

    def path(self, name: str) -> Path | None:
        """The file ``name`` of this recipe or the one it inherits from; None when neither has it."""
        if (self.folder / name).is_file():
            return self.folder / name
        return self.parent.path(name) if self.parent else None

    def required(self, name: str) -> Path:
        path = self.path(name)
        if path is None:
            raise ValueError(f"recipe '{self.folder}' lacks {name}; add it (or inherit a folder that has it)")
        return path

    def read(self, name: str) -> dict:
        return yaml.safe_load(self.required(name).read_text())  # JSON is YAML


def stage_vae(cfg: dict, images, heldout, out: Path, progress: bool) -> dict:
    from .vae import latent_scaling_factor, reconstruction_psnr, train_vae, vae_config

    config = vae_config(cfg["block_out_channels"], layers_per_block=cfg["layers_per_block"],
                        norm_num_groups=cfg["norm_num_groups"], sample_size=images.shape[1])
    vae = train_vae(images, config=config, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                    kl_weight=cfg["kl_weight"], seed=cfg["seed"], progress=progress, log_every=250)
    scale = latent_scaling_factor(vae, heldout)
    vae.register_to_config(scaling_factor=scale)
    psnr = reconstruction_psnr(vae, heldout)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    return {"vae_psnr_heldout_db": psnr, "vae_scaling_factor": scale}


def stage_clip(cfg: dict, images, captions, heldout, heldout_captions, out: Path, progress: bool) -> dict:
    from .clip import clip_config, export_text_encoder, retrieval_top1, train_clip

    config = clip_config(embed_dim=cfg["embed_dim"], image_size=images.shape[1], vision_width=cfg["vision_width"],
                         vision_layers=cfg["vision_layers"], text_width=cfg["text_width"],
                         text_layers=cfg["text_layers"], heads=cfg["heads"], context_length=cfg["context_length"])
    model = train_clip(images, captions, config=config, steps=cfg["steps"], batch_size=cfg["batch_size"],
                       lr=cfg["lr"], seed=cfg["seed"], progress=progress, log_every=250)
    export_text_encoder(model, out)
    return {"clip_text_to_image_top1_heldout": retrieval_top1(model, heldout, heldout_captions)}


def to_fp16_folder(model_dir: Path, dest: Path, generation: dict) -> Path:
    """The shipped folder: ``model_dir`` in fp16 with its generation defaults (``latentdiff_generation.json``)."""
    return copy_as_fp16(model_dir, dest, {GENERATION_CONFIG: generation})


def train_unet(recipe: Path, pretrained: Path, data: Path, out: Path, progress: bool, *,
               cache_dir: Path | None = None, scheduler: Path | None = None):
    """The ordinary trainer on a stage recipe, with the build's folders filled in; resumes an interrupted run.

    ``cache_dir`` shares another stage's latent cache; ``scheduler`` replaces the pretrained model's schedule."""
    from ..training.config import load_config
    from ..training.train import train

    config = load_config(recipe)
    config.model.pretrained, config.data.root, config.train.output_dir = str(pretrained), str(data), str(out)
    config.train.progress = progress
    if cache_dir is not None:
        config.data.cache_dir = str(cache_dir)
    if scheduler is not None:
        config.model.scheduler = str(scheduler)
    return train(config, resume="latest")


def stage_finetune(recipe: Recipe, workdir: Path, model: Path, data: Path, progress: bool, done) -> Path:
    """Stage 4: fine-tune stage 3's UNet, possibly on another noise schedule; returns the final model folder."""
    out = workdir / "unet-finetune"
    if not (out / "model" / "model_index.json").is_file():
        start = time.perf_counter()
        schedule = recipe.path("scheduler-finetune.json")  # the stage 4 schedule replaces stage 3's, if given
        result = train_unet(recipe.required("unet-finetune.yaml"), model, data, out, progress,
                            cache_dir=workdir / "unet" / "cache", scheduler=schedule)
        done("unet_finetune", start, unet_finetune_final_loss=result.loss, unet_finetune_steps=result.global_step)
    return out / "model"


def build(configs: Path, workdir: Path, dest: Path, progress: bool = True) -> dict:
    """Run the stages that are not done yet; returns the report (also written to dest/build_report.json)."""
    recipe, workdir, dest = Recipe(configs), Path(workdir), Path(dest)
    world = recipe.read("world.yaml")
    workdir.mkdir(parents=True, exist_ok=True)
    report_file = workdir / "build_report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {"seconds": {}}

    def done(stage: str, start: float, **numbers) -> None:
        report["seconds"][stage] = round(time.perf_counter() - start, 1)
        report.update(numbers)
        report_file.write_text(json.dumps(report, indent=2))
        log.info("stage %s done in %.0f s %s", stage, report["seconds"][stage], numbers or "")

    start = time.perf_counter()
    data = workdir / "data"
    if not (data / "metadata.jsonl").is_file():
        render_dataset(data, world["train_images"], world["seed"], overwrite=True, progress=progress)
        done("render", start)
    images, captions = _arrays(world["train_images"], world["seed"], "train")
    heldout, heldout_captions = _arrays(world["heldout_images"], world["seed"] + 1, "heldout")
    base = workdir / "base"
    if not (base / "vae" / "config.json").is_file():
        start = time.perf_counter()
        done("vae", start, **stage_vae(recipe.read("vae.yaml"), images, heldout, base, progress))
    if not (base / "text_encoder" / "config.json").is_file():
        start = time.perf_counter()
        done("clip", start, **stage_clip(recipe.read("clip.yaml"), images, captions, heldout, heldout_captions,
                                         base, progress))
    write_encoders_folder(base, recipe.read("scheduler.json"))
    if not (workdir / "unet" / "model" / "model_index.json").is_file():
        start = time.perf_counter()
        result = train_unet(recipe.required("unet.yaml"), base, data, workdir / "unet", progress)
        done("unet", start, unet_final_loss=result.loss, unet_steps=result.global_step)
    final = workdir / "unet" / "model"
    if recipe.path("unet-finetune.yaml"):
        final = stage_finetune(recipe, workdir, final, data, progress, done)
    generation = recipe.read("generation.json")
    to_fp16_folder(final, dest, generation)
    report["total_seconds"] = round(sum(report["seconds"].values()), 1)
    report["size_mb"] = round(sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) / 2**20, 2)
    report_file.write_text(json.dumps(report, indent=2))
    (dest / "build_report.json").write_text(json.dumps(report, indent=2))
    return report
