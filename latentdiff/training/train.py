"""Train or fine-tune a UNet with Accelerate: one function that reads top to bottom.

Works as a plain command and under ``accelerate launch`` (any number of processes). All randomness of
micro-step g on rank r comes from a generator seeded by (seed, g, r) and the data order is a function
of (seed, step), so a resumed run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import yaml
from tqdm.auto import tqdm

from ..core.schedule import Schedule
from ..models import Components, load_components, save_components
from ..models.device import cpu_has_native_bf16, make_accelerator, pick_device, pick_mixed_precision
from ..pipelines.images import grid, save_png
from .cache import module_identity
from .checkpoint import list_checkpoints, load_checkpoint, remove_stale_temporaries, resolve_resume, save_checkpoint
from .config import Config
from .data import Transform, scan_dataset
from .ema import EMA
from .inputs import SampleOrder, TrainingInputs, encode_captions, stable_seed
from .objective import drop_captions, noised_batch, weighted_mse
from .pretrained import pretrained_folder
from .validate import read_scheduler_overrides, validate

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became non-finite); the message says what to do."""


@dataclass
class TrainResult:
    global_step: int
    loss: float
    output_dir: Path
    model_dir: Optional[Path] = None  # train.export_format diffusers or both
    model_file: Optional[Path] = None  # train.export_format single_file or both: one original-layout .safetensors
    lora_path: Optional[Path] = None  # the first of lora_paths
    lora_paths: list = field(default_factory=list)  # the LoRA files written (lora.format: diffusers, kohya or both)
    encoder_counts: dict = field(default_factory=dict)
    seconds_per_step: Optional[float] = None  # wall time per optimizer step, after the first WARMUP_STEPS


WARMUP_STEPS = 3  # steps left out of seconds_per_step (allocator, kernel selection, first checkpoint dirs)


def _build_unet(config: Config, frozen: Components):
    from diffusers import UNet2DConditionModel

    m = config.model
    if m.unet_config:  # a mapping whose cross_attention_dim, if any, fits the text encoder (validate checked)
        unet_cfg = yaml.safe_load(Path(m.unet_config).read_text())
        unet_cfg.setdefault("cross_attention_dim", frozen.text_encoder.config.hidden_size)
        return UNet2DConditionModel.from_config(unet_cfg)
    return UNet2DConditionModel.from_pretrained(frozen.path, subfolder="unet",
                                                use_safetensors=None if m.allow_pickle else True)


def train(config: Config, resume: Optional[str] = None) -> TrainResult:
    """Run the training described by ``config``; ``resume`` is None, 'latest' or a checkpoint folder."""
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler

    validate(config)  # every value, before any side effect: a refused run leaves nothing behind
    m, d, t = config.model, config.data, config.train
    out = Path(t.output_dir)
    checkpoint = resolve_resume(out, resume)
    trackers = "tensorboard" if _has_tensorboard() else None
    device = pick_device("auto")
    precision = pick_mixed_precision(t.mixed_precision, device)
    if precision != t.mixed_precision:
        log.info("train.mixed_precision=auto: %s on this %s", precision, "GPU" if device.type == "cuda" else "CPU")
    elif precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("train.mixed_precision=bf16 on a CPU without native bf16 is emulated and many times slower "
                    "than fp32; use auto or no")
    accelerator = make_accelerator("auto", precision, gradient_accumulation_steps=t.gradient_accumulation_steps,
                                   log_with=trackers, project_config=ProjectConfiguration(
                                       project_dir=str(out), logging_dir=str(out / "logs")))
    rank, world = accelerator.process_index, accelerator.num_processes

    # 1. Frozen encoders, schedule, and the UNet to train (full or LoRA).
    frozen = load_components(pretrained_folder(m.pretrained, m.allow_pickle), device=accelerator.device,
                             allow_pickle=m.allow_pickle, with_unet=False, **({"vae": m.vae} if m.vae else {}))
    scheduler_config = {**frozen.scheduler_config, **read_scheduler_overrides(m.scheduler),
                        **({"prediction_type": m.prediction_type} if m.prediction_type else {})}
    frozen.scheduler_config = scheduler_config
    schedule = Schedule.from_config(scheduler_config)
    unet = _build_unet(config, frozen)
    text_encoder = None  # the text encoder when it trains (LoRA adapters on its attention), else frozen in `frozen`
    if config.lora.enabled:
        from ..models.lora import add_lora, add_text_encoder_lora

        params = add_lora(unet, config.lora)
        if config.lora.train_text_encoder:
            text_encoder = frozen.text_encoder
            params += add_text_encoder_lora(text_encoder, config.lora)
    else:
        unet.requires_grad_(True)
        params = list(unet.parameters())
    if t.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()

    # 2. Data: scan once (bad files skipped with a count), then the cache or on-the-fly encoding.
    if not accelerator.is_main_process:
        logging.getLogger(scan_dataset.__module__).setLevel(logging.ERROR)
    report = scan_dataset(d.root, d.caption_column)
    transform = Transform(d.resolution, d.crop, d.flip)
    if accelerator.is_main_process:  # the first write: the models and the data are known to be usable
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.yaml")
        remove_stale_temporaries(out)
    accelerator.wait_for_everyone()
    cache_dir = Path(d.cache_dir or out / "cache") if d.cache else None
    if text_encoder is not None and accelerator.is_main_process:
        log.info("lora.train_text_encoder: captions are encoded by the training text encoder in every step; "
                 "text embeddings are not cached (latents still are)")
    inputs = TrainingInputs(report.items, transform, frozen, t.seed, cache_dir, d.encode_batch_size, d.max_chunks,
                            encode_text=text_encoder is None)
    if cache_dir is not None:
        inputs.build_cache(rank, world, accelerator.wait_for_everyone)
    order = SampleOrder(len(report.items), t.seed, t.batch_size, world)

    # 3. Optimizer, LR schedule (counted in per-process scheduler steps, as Accelerate steps it), EMA.
    lr = t.learning_rate * (t.batch_size * t.gradient_accumulation_steps * world if t.scale_lr else 1)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(t.adam_beta1, t.adam_beta2),
                                  weight_decay=t.adam_weight_decay, eps=t.adam_epsilon)
    lr_scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.lr_warmup_steps * world,
                                 num_training_steps=t.max_steps * world)
    if text_encoder is None:
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    else:
        unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(unet, text_encoder, optimizer, lr_scheduler)
    trained = [unet] if text_encoder is None else [unet, text_encoder]
    ema = EMA(params, t.ema_decay) if t.ema_decay else None

    step = 0
    if checkpoint is not None:
        step = load_checkpoint(accelerator, checkpoint, ema)
        log.info("resumed from %s at step %d", checkpoint, step)
    if trackers:
        accelerator.init_trackers("latentdiff", config=_flat(config))

    # 4. The loop: one iteration per optimizer step, gradient_accumulation_steps micro-steps each.
    bar = tqdm(total=t.max_steps, initial=step, disable=not (t.progress and accelerator.is_local_main_process),
               desc="train", dynamic_ncols=True)
    loss_value = float("nan")
    clock = _StepClock(step)
    while step < t.max_steps:
        for micro in range(t.gradient_accumulation_steps):
            g = step * t.gradient_accumulation_steps + micro
            generator = torch.Generator().manual_seed(stable_seed(t.seed, "micro", g, rank))
            latents, text = inputs.batch(order.micro_batch(g, rank), generator)  # (B, C, h, w), (B, L, D) | captions
            if text_encoder is None:
                text = drop_captions(text, inputs.empty, t.caption_dropout, generator)
            else:
                text = _drop_caption_texts(text, t.caption_dropout, generator)
            batch = noised_batch(latents.to(accelerator.device), schedule, generator,
                                 noise_offset=t.noise_offset, snr_gamma=t.snr_gamma)
            with accelerator.accumulate(*trained), accelerator.autocast():
                if text_encoder is not None:
                    text = encode_captions(text_encoder, frozen.tokenizer, text, d.max_chunks)  # (B, L, D)
                prediction = unet(batch.x_t, batch.t, encoder_hidden_states=text.to(accelerator.device)).sample
                loss = weighted_mse(prediction, batch.target, batch.weight)
                _stop_if_not_finite(accelerator, loss, step, out)
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, t.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(step)
        step += 1
        loss_value = accelerator.reduce(loss.detach(), "mean").item()
        clock.tick(step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        if trackers and step % t.log_every == 0:
            accelerator.log({"loss": loss_value, "lr": lr_scheduler.get_last_lr()[0]}, step=step)
        if step % t.checkpoint_every == 0 or step == t.max_steps:
            save_checkpoint(accelerator, out, step, config, ema, t.keep_checkpoints)
        if t.validate_every and t.validation_prompts and (step % t.validate_every == 0 or step == t.max_steps):
            _validate(accelerator, unet, frozen, ema, config, step, trackers)
    bar.close()

    # 5. Export: the EMA weights if any; LoRA as diffusers and/or kohya LoRA files, else a full model folder.
    result = TrainResult(step, loss_value, out, encoder_counts=dict(inputs.counts),
                         seconds_per_step=clock.seconds_per_step())
    from accelerate.utils import gather_object

    digests = gather_object([module_identity(accelerator.unwrap_model(unet))])  # equal iff ranks agree
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(unet)
        with ema.swapped_in() if ema is not None else nullcontext():
            if config.lora.enabled:
                from ..models.lora import save_lora

                trained_text = accelerator.unwrap_model(text_encoder) if text_encoder is not None else None
                result.lora_paths = save_lora(model, out / "lora", trained_text, format=config.lora.format,
                                              name=out.resolve().name)
                result.lora_path = result.lora_paths[0]
            else:
                final = Components(model, frozen.vae, frozen.text_encoder, frozen.tokenizer, scheduler_config)
                if config.train.export_format in ("diffusers", "both"):
                    result.model_dir = save_components(final, out / "model")
                if config.train.export_format in ("single_file", "both"):
                    from ..models.single_file_save import save_single_file

                    result.model_file = save_single_file(final, out / "model.safetensors")
        (out / "result.json").write_text(json.dumps({
            "global_step": step, "loss": loss_value, "checkpoints": [str(p) for p in list_checkpoints(out)],
            "num_processes": world, "weights_sha256_per_rank": digests, "encoder_counts_rank0": inputs.counts,
            "mixed_precision": precision, "seconds_per_step": result.seconds_per_step,
        }, indent=2))
    accelerator.end_training()
    return result


class _StepClock:
    """Seconds per optimizer step, checkpoints and validation included, the first WARMUP_STEPS left out."""

    def __init__(self, first_step: int):
        self.start_step, self.start, self.last_step, self.last = first_step + WARMUP_STEPS, None, None, None

    def tick(self, step: int) -> None:
        now = time.perf_counter()
        if step == self.start_step:
            self.start = now
        elif step > self.start_step:
            self.last_step, self.last = step, now

    def seconds_per_step(self) -> Optional[float]:
        if self.last is None:
            return None
        return (self.last - self.start) / (self.last_step - self.start_step)


def _drop_caption_texts(captions: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Each caption replaced by the empty prompt with probability p (CFG training), drawn as drop_captions draws."""
    if p <= 0:
        return captions
    drop = torch.rand(len(captions), generator=generator) < p  # (B,)
    return ["" if dropped else caption for caption, dropped in zip(captions, drop.tolist())]


def _stop_if_not_finite(accelerator, loss: torch.Tensor, step: int, out: Path) -> None:
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).item() else 1.0], device=accelerator.device)
    if accelerator.reduce(bad, "sum").item() > 0:
        last = list_checkpoints(out)
        where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
        raise TrainingError(f"the loss became non-finite at step {step + 1}; training stopped and {where}. "
                            "Lower train.learning_rate or enable train.max_grad_norm, then --resume latest")


def _validate(accelerator, unet, frozen: Components, ema, config: Config, step: int, trackers) -> None:
    """Sample the validation prompts with our pipeline (EMA weights if enabled); save and log a grid."""
    from ..pipelines import Pipeline

    t = config.train
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(unet)
        model.eval()
        with ema.swapped_in() if ema is not None else nullcontext():
            pipe = Pipeline(Components(model, frozen.vae, frozen.text_encoder, frozen.tokenizer,
                                       frozen.scheduler_config))
            images = pipe(t.validation_prompts, steps=t.validation_steps, guidance=t.validation_guidance, seed=0)
        model.train()
        folder = Path(t.output_dir) / "validation"
        folder.mkdir(exist_ok=True)
        image = grid(images)
        save_png(image, folder / f"step-{step:07d}.png")
        if trackers:
            import numpy as np

            writer = accelerator.get_tracker("tensorboard").writer
            writer.add_image("validation", np.asarray(image), step, dataformats="HWC")
    accelerator.wait_for_everyone()


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401

        return True
    except ImportError:
        return False


def _flat(config: Config) -> dict:
    """Scalars of the config as 'section.key' for the tracker's hyperparameter table."""
    out = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            out[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
