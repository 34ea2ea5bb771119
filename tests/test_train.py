"""Training on tiny models: loss goes down, exact resume (also after SIGKILL), cache reuse, export, LoRA."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import fixed_batch_loss

from latentdiff.training.config import load_config
from latentdiff.training.train import TrainingError, train

REPO = Path(__file__).resolve().parent.parent


def make_config(tmp_path, model, data, **train):
    overrides = [f"model.pretrained={model}", f"data.root={data}", "data.resolution=64",
                 f"train.output_dir={tmp_path / 'run'}", "train.batch_size=2", "train.max_steps=4",
                 "train.checkpoint_every=2", "train.learning_rate=1e-3", "train.ema_decay=0.9",
                 "train.progress=false", "train.lr_scheduler=constant_with_warmup", "train.lr_warmup_steps=2"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, overrides)


def unet_weights(folder: Path) -> dict:
    return load_file(str(next((folder / "unet").glob("*.safetensors"))))


def ema_weights(run: Path) -> dict:
    return load_file(str(sorted((run / "checkpoints").glob("step-*"))[-1] / "ema.safetensors"))


def assert_same(a: dict, b: dict, tol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=tol)


def test_training_lowers_the_loss_and_exports_a_loadable_model(tiny_models, dataset, tmp_path):
    from diffusers import StableDiffusionPipeline

    from latentdiff.pipelines import Pipeline

    cfg = make_config(tmp_path, tiny_models[("epsilon", 8)], dataset, max_steps=30, batch_size=4,
                      ema_decay="null", caption_dropout=0.0, checkpoint_every=100, lr_warmup_steps=0)
    first = train(cfg)
    log = json.loads((tmp_path / "run" / "result.json").read_text())
    assert log["global_step"] == 30 and len(log["checkpoints"]) == 1
    assert log["seconds_per_step"] == first.seconds_per_step > 0
    # the same fixed evaluation batch, before (the base model) and after training
    before = fixed_batch_loss(tiny_models[("epsilon", 8)], dataset)
    after = fixed_batch_loss(first.model_dir, dataset)
    assert after < 0.7 * before, (before, after)
    pipe = StableDiffusionPipeline.from_pretrained(first.model_dir, safety_checker=None)
    assert pipe.unet.config.sample_size == 8
    assert Pipeline.from_pretrained(first.model_dir, device="cpu")("a red circle", steps=3)[0].size == (64, 64)
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1] / "config.yaml").is_file()


def test_resume_continues_exactly(tiny_models, dataset, tmp_path):
    model = tiny_models[("v_prediction", 4)]
    straight = train(make_config(tmp_path / "a", model, dataset, snr_gamma=5.0, noise_offset=0.05))
    make = lambda steps: make_config(tmp_path / "b", model, dataset, max_steps=steps, snr_gamma=5.0,  # noqa: E731
                                     noise_offset=0.05)
    train(make(2))
    resumed = train(make(4), resume="latest")
    assert resumed.global_step == straight.global_step == 4
    assert_same(unet_weights(straight.model_dir), unet_weights(resumed.model_dir))
    assert_same(ema_weights(tmp_path / "a" / "run"), ema_weights(tmp_path / "b" / "run"))
    # the second run reused the first run's cache: no encoder work at all
    assert resumed.encoder_counts == {"vae_images": 0, "text_prompts": 1}  # only the empty prompt


@pytest.mark.slow  # ~45 s: a run killed with SIGKILL and resumed
def test_resume_after_sigkill_mid_run(tiny_models, dataset, tmp_path):
    model = tiny_models[("epsilon", 8)]
    common = [f"model.pretrained={model}", f"data.root={dataset}", "data.resolution=64", "train.batch_size=2",
              "train.max_steps=30", "train.checkpoint_every=3", "train.learning_rate=1e-3",
              "train.ema_decay=0.9", "train.progress=false"]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "latentdiff.cli", "train", *[f"--{a}" for a in common], f"--train.output_dir={run}"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "step-0000006").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((run / "checkpoints").glob("step-*")) and not (run / "model").exists(), "kill after a checkpoint"
    subprocess.run(cmd + ["--resume", "latest"], env=env, check=True, capture_output=True)
    straight = train(load_config(None, common + [f"train.output_dir={tmp_path / 'straight'}"]))
    assert_same(unet_weights(straight.model_dir), unet_weights(run / "model"))
    assert_same(ema_weights(tmp_path / "straight"), ema_weights(run))
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_cache_is_reused_and_one_changed_caption_reencodes_only_itself(tiny_models, dataset, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    cache = tmp_path / "cache"
    cfg = lambda out: make_config(out, tiny_models[("epsilon", 8)], data, max_steps=1)  # noqa: E731
    first_cfg = cfg(tmp_path / "1")
    first_cfg.data.cache_dir = str(cache)
    first = train(first_cfg)
    assert first.encoder_counts["vae_images"] == 8
    second_cfg = cfg(tmp_path / "2")
    second_cfg.data.cache_dir = str(cache)
    assert train(second_cfg).encoder_counts == {"vae_images": 0, "text_prompts": 1}
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    rows[3]["text"] = "a brand new caption"
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    third_cfg = cfg(tmp_path / "3")
    third_cfg.data.cache_dir = str(cache)
    assert train(third_cfg).encoder_counts == {"vae_images": 0, "text_prompts": 2}  # the new caption + empty


def test_cache_survives_moving_the_model_folder(tiny_models, dataset, tmp_path):
    """The cache is keyed by what the encoders compute, not by the folder they were loaded from."""
    import shutil

    from latentdiff.training.cache import module_identity

    moved = tmp_path / "moved-model"
    shutil.copytree(tiny_models[("epsilon", 8)], moved)
    cfg = lambda out, model: make_config(out, model, dataset, max_steps=1)  # noqa: E731
    first_cfg, second_cfg = cfg(tmp_path / "1", tiny_models[("epsilon", 8)]), cfg(tmp_path / "2", moved)
    first_cfg.data.cache_dir = second_cfg.data.cache_dir = str(tmp_path / "cache")
    assert train(first_cfg).encoder_counts["vae_images"] == 8
    assert train(second_cfg).encoder_counts == {"vae_images": 0, "text_prompts": 1}  # 1: the empty prompt
    changed = torch.nn.Linear(2, 2)
    before = module_identity(changed)
    with torch.no_grad():
        changed.weight[0, 0] += 1e-3
    assert module_identity(changed) != before


def test_cache_and_no_cache_feed_the_same_training_inputs(tiny_models, dataset, tmp_path):
    """The cache changes only where latents come from: every micro-batch gets the same numbers."""
    from latentdiff.models import load_components
    from latentdiff.training.data import Transform, scan_dataset
    from latentdiff.training.inputs import SampleOrder, TrainingInputs

    frozen = load_components(tiny_models[("epsilon", 8)], device="cpu", with_unet=False)
    items = scan_dataset(dataset).items
    transform = Transform(64, flip=True)
    cached = TrainingInputs(items, transform, frozen, seed=5, cache_dir=tmp_path / "cache")
    cached.build_cache()
    assert cached.counts["vae_images"] == 2 * len(items)  # both orientations
    direct = TrainingInputs(items, transform, frozen, seed=5)
    order = SampleOrder(len(items), seed=5, batch_size=3)
    for micro in range(6):  # crosses an epoch boundary
        a = cached.batch(order.micro_batch(micro, 0), torch.Generator().manual_seed(micro))
        b = direct.batch(order.micro_batch(micro, 0), torch.Generator().manual_seed(micro))
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-5)


def test_sample_order_covers_each_epoch_once_and_splits_ranks():
    from latentdiff.training.inputs import SampleOrder

    one = SampleOrder(10, seed=0, batch_size=2, num_processes=1)
    two = SampleOrder(10, seed=0, batch_size=1, num_processes=2)
    stream = [s for m in range(5) for s in one.micro_batch(m, 0)]
    assert sorted(i for _, i in stream) == list(range(10)) and {e for e, _ in stream} == {0}
    assert [s for m in range(5) for r in (0, 1) for s in two.micro_batch(m, r)] == stream
    assert [i for m in range(5, 10) for _, i in one.micro_batch(m, 0)] != [i for _, i in stream]  # new epoch order


def test_lora_trains_exports_and_loads_in_diffusers_and_generate(tiny_models, dataset, tmp_path):
    from diffusers import StableDiffusionPipeline

    from latentdiff.cli import main

    model = tiny_models[("epsilon", 8)]
    cfg = make_config(tmp_path, model, dataset, max_steps=3, learning_rate=1e-2)
    cfg.lora.enabled, cfg.lora.rank = True, 4
    result = train(cfg)
    assert result.lora_path.name == "pytorch_lora_weights.safetensors"
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    base = pipe("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(0)).images[0]
    pipe.load_lora_weights(str(result.lora_path.parent))
    with_lora = pipe("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.abs(np.asarray(base, int) - np.asarray(with_lora, int)).max() > 0
    out = tmp_path / "lora.png"
    assert main(["generate", "a red circle", "--model", str(model), "--lora", str(result.lora_path), "--steps",
                 "5", "--seed", "0", "-o", str(out), "--quiet"]) == 0
    from PIL import Image

    ours = np.asarray(Image.open(out), int)
    assert np.abs(ours - np.asarray(with_lora, int)).max() <= 2  # fused LoRA vs diffusers' unfused layers


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tiny_models, dataset, tmp_path):
    cfg = make_config(tmp_path, tiny_models[("epsilon", 8)], dataset, max_steps=6, learning_rate=1e12,
                      max_grad_norm=0, checkpoint_every=1, ema_decay="null")
    with pytest.raises(TrainingError, match=r"non-finite at step \d+; training stopped and the last good checkpoint"):
        train(cfg)
    last = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    weights = load_file(str(next(last.glob("*.safetensors"))))
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.slow  # ~30 s: two gloo processes
def test_two_processes_train_in_sync(tiny_models, dataset, tmp_path):
    """`accelerate launch` with 2 CPU processes (torchrun + gloo): one checkpoint, identical weights on both ranks."""
    run = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "latentdiff.cli",
           "train", f"--model.pretrained={tiny_models[('epsilon', 8)]}", f"--data.root={dataset}",
           "--data.resolution=64", f"--train.output_dir={run}", "--train.batch_size=2", "--train.max_steps=3",
           "--train.checkpoint_every=3", "--train.progress=false"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((run / "result.json").read_text())
    assert result["num_processes"] == 2 and result["global_step"] == 3
    assert [Path(p).name for p in result["checkpoints"]] == ["step-0000003"]
    assert len(set(result["weights_sha256_per_rank"])) == 1
    assert result["encoder_counts_rank0"]["vae_images"] == 4  # the cache was split between the ranks


def test_bf16_mixed_precision_and_gradient_checkpointing_on_cpu(tiny_models, dataset, tmp_path):
    from accelerate.state import AcceleratorState

    # Accelerate keeps one state per process; other tests in this process already set mixed_precision="no"
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = make_config(tmp_path, tiny_models[("epsilon", 8)], dataset, max_steps=2, mixed_precision="bf16",
                      gradient_checkpointing="true", validate_every=2, validation_prompts="[a red circle]",
                      validation_steps=2)
    result = train(cfg)
    assert np.isfinite(result.loss)
    assert (tmp_path / "run" / "validation" / "step-0000002.png").is_file()
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))  # TensorBoard scalars and images
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("native", [False, True])
def test_auto_mixed_precision_follows_the_cpu(tiny_models, dataset, tmp_path, monkeypatch, caplog, native):
    """`auto` trains in bf16 only on CPUs that compute it natively (emulated bf16 is several times slower)."""
    from accelerate.state import AcceleratorState

    import latentdiff.models.device as models
    import latentdiff.training.train as training

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native)
    AcceleratorState._reset_state(reset_partial_state=True)
    train(make_config(tmp_path, tiny_models[("epsilon", 8)], dataset, max_steps=1, mixed_precision="auto"))
    AcceleratorState._reset_state(reset_partial_state=True)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["mixed_precision"] == ("bf16" if native else "no")
    # asking for bf16 outright where it is emulated warns, once, and names the fix
    with caplog.at_level("WARNING", logger="latentdiff"):
        train(make_config(tmp_path / "explicit", tiny_models[("epsilon", 8)], dataset, max_steps=1,
                          mixed_precision="bf16"))
    AcceleratorState._reset_state(reset_partial_state=True)
    assert ("emulated and many times slower than fp32; use auto or no" in caplog.text) is (not native)


def test_build_stage_4_finetunes_on_its_own_schedule_and_is_skipped_when_done(tiny_models, dataset, tmp_path):
    """`shapes build` stage 4: stage 3's model, its scheduler swapped for scheduler-finetune.json, trained on;
    the result carries the new schedule, stage 3's folder is left as it was, and a second build skips it.
    The recipe inherits the schedule from a parent recipe folder (``inherit`` in world.yaml)."""
    import shutil

    from latentdiff.build.recipe import Recipe, stage_finetune

    parent, configs, workdir = tmp_path / "base-recipe", tmp_path / "configs", tmp_path / "work"
    parent.mkdir()
    configs.mkdir()
    (parent / "world.yaml").write_text("train_images: 8\n")
    (configs / "world.yaml").write_text("inherit: ../base-recipe\n")
    stage3 = workdir / "unet" / "model"
    shutil.copytree(tiny_models[("epsilon", 8)], stage3)
    before = (stage3 / "scheduler" / "scheduler_config.json").read_text()
    schedule = dict(json.loads(before), prediction_type="v_prediction", rescale_betas_zero_snr=True,
                    timestep_spacing="trailing")
    (parent / "scheduler-finetune.json").write_text(json.dumps(schedule))
    (configs / "unet-finetune.yaml").write_text(
        "data: {resolution: 64}\ntrain: {batch_size: 2, max_steps: 3, learning_rate: 1.0e-3, ema_decay: null,\n"
        "        checkpoint_every: 3}\n")
    calls = []
    recipe = Recipe(configs)
    assert recipe.path("scheduler-finetune.json") == parent / "scheduler-finetune.json"
    assert recipe.path("clip.yaml") is None
    out = stage_finetune(recipe, workdir, stage3, dataset, False, lambda stage, start, **numbers: calls.append(stage))

    shipped = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert {k: shipped[k] for k in schedule if k in shipped} == {k: schedule[k] for k in schedule if k in shipped}
    assert shipped["rescale_betas_zero_snr"] is True and shipped["prediction_type"] == "v_prediction"
    assert (stage3 / "scheduler" / "scheduler_config.json").read_text() == before
    old, new = unet_weights(stage3), unet_weights(out)
    assert old.keys() == new.keys() and any(not torch.equal(old[k], new[k]) for k in old)
    assert stage_finetune(recipe, workdir, stage3, dataset, False, lambda *a, **k: calls.append("again")) == out
    assert calls == ["unet_finetune"]


def test_model_scheduler_fine_tunes_on_another_schedule_as_if_the_folder_had_it(tiny_models, dataset, tmp_path):
    """model.scheduler replaces entries of the pretrained scheduler config: training and the saved model use
    the merged schedule, exactly as a copy of the folder with that scheduler config would, and the
    pretrained folder is left alone. Bad files are one-line errors."""
    import shutil

    model = tiny_models[("epsilon", 8)]
    before = (Path(model) / "scheduler" / "scheduler_config.json").read_text()
    overrides = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    (tmp_path / "zero-snr.yaml").write_text(yaml.safe_dump(overrides))
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(json.loads(before), **overrides)))

    runs = {}
    for name, pretrained, scheduler in (("override", model, str(tmp_path / "zero-snr.yaml")), ("copy", copy, None)):
        config = make_config(tmp_path / name, pretrained, dataset, max_steps=2)
        config.model.scheduler = scheduler
        runs[name] = train(config)
        saved = json.loads((tmp_path / name / "run" / "model" / "scheduler" / "scheduler_config.json").read_text())
        assert {k: saved[k] for k in overrides} == overrides, name
    assert runs["override"].loss == pytest.approx(runs["copy"].loss, rel=1e-6)
    assert_same(unet_weights(tmp_path / "override" / "run" / "model"), unet_weights(tmp_path / "copy" / "run" / "model"))
    assert (Path(model) / "scheduler" / "scheduler_config.json").read_text() == before

    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "bad.json").write_text('{"prediction_type": "noise"}')
    for path, message in ((tmp_path / "missing.json", "cannot be read"), (tmp_path / "list.yaml", "must hold a mapping"),
                          (tmp_path / "bad.json", "prediction_type in model.scheduler")):
        config = make_config(tmp_path / "bad", model, dataset)
        config.model.scheduler = str(path)
        with pytest.raises(ValueError, match=message) as error:
            train(config)
        assert "\n" not in str(error.value)


def test_step_clock_leaves_out_the_warmup_steps(monkeypatch):
    from latentdiff.training import train as train_module

    times = iter([0.0, 10.0, 11.0, 12.0, 14.0, 16.0])  # steps 1..6 end at these times; 1-3 are warm-up
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: next(times))
    clock = train_module._StepClock(0)
    for step in range(1, 7):
        clock.tick(step)
    assert clock.seconds_per_step() == (16.0 - 11.0) / 3
    short = train_module._StepClock(10)  # resumed at 10, stopped within the warm-up: no number
    assert short.seconds_per_step() is None
