"""The CUDA paths: automatic device and dtype, fp16 parity with diffusers on the GPU, mixed-precision training,
editing in fp32 on the GPU. Skipped without a CUDA GPU (CI has none); run with `pytest -m gpu` on one.

Each test prints what it measured (run with -s to see it)."""

import json

import numpy as np
import pytest
import torch
from tiny import fixed_batch_loss

from latentdiff.models import DEFAULT_MODEL

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _ints(image):
    return np.asarray(image, dtype=int)


def _diffusers_fp16(path, scheduler_cls, prompt, seed, float64_table=False, **kwargs):
    """diffusers' fp16 images; ``float64_table`` hands its scheduler our float64 ᾱ table (see
    test_default_model.test_same_image_as_diffusers: its float32 table makes η = 1 NaN at ᾱ_t = 0 on some machines)."""
    from diffusers import StableDiffusionPipeline

    from latentdiff.core.schedule import Schedule

    pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch.float16, safety_checker=None).to("cuda")
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    if float64_table:
        schedule = Schedule.from_config(dict(pipe.scheduler.config))
        pipe.scheduler.alphas_cumprod = schedule.alphas_cumprod
        pipe.scheduler.final_alpha_cumprod = torch.tensor(schedule.final_alpha_cumprod, dtype=torch.float64)
    pipe.set_progress_bar_config(disable=True)
    return [_ints(im) for im in pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).images]


def test_auto_picks_cuda_and_fp16(tiny_models):
    from latentdiff.pipelines import Pipeline

    pipe = Pipeline.from_pretrained(tiny_models[("epsilon", 8)])
    assert pipe.components.device.type == "cuda" and pipe.components.dtype == torch.float16
    out = pipe.generate("a red circle", steps=5)[0]
    assert out.params["dtype"] == "float16"


@pytest.mark.parametrize("key", [("epsilon", 8), ("v_prediction", 4), "sd2"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_fp16_on_cuda_matches_diffusers_fp16_on_cuda(tiny_models, key, sampler):
    from diffusers import DDIMScheduler, DDPMScheduler

    from latentdiff.pipelines import Pipeline

    path, prompt, seed = tiny_models[key], "a red circle on a blue background", 1234
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    theirs = _diffusers_fp16(path, cls, prompt, seed, num_inference_steps=50, guidance_scale=7.5)
    ours = [_ints(im) for im in Pipeline.from_pretrained(path, device="cuda", dtype="fp16")(
        prompt, steps=50, guidance=7.5, sampler=sampler, seed=seed)]
    diff = np.abs(ours[0] - theirs[0])
    print(f"\n{key} {sampler}: fp16 CUDA vs diffusers fp16 CUDA: max {diff.max()}, mean {diff.mean():.4f}")
    # H200, torch 2.11: max 2, mean 0.16-0.22 on every model and sampler. On the CPU in fp32 it is <= 1; in fp16
    # our step applies float64-folded coefficients once (x·a + out·b) where diffusers rounds x̂₀ and ε̂ in fp16.
    assert diff.max() <= 2 and ours[0].std() > 5


@pytest.mark.skipif(not (DEFAULT_MODEL / "model_index.json").is_file(), reason="weights/shapes is not built")
def test_default_model_fp16_on_cuda_matches_diffusers_and_keeps_adherence():
    """Same image as diffusers in fp16 on the GPU, and the shipped model's adherence floors (the slow CPU guard's)
    hold in fp16: no overflow or drift from half precision."""
    from diffusers import DDIMScheduler

    from latentdiff.pipelines import Pipeline
    from latentdiff.shapes.evaluate import evaluate, prompt_set

    prompt = "a large red circle in the top left corner on a white background"
    theirs = _diffusers_fp16(DEFAULT_MODEL, DDIMScheduler, prompt, 3, num_inference_steps=10, guidance_scale=4.0,
                             eta=1.0, float64_table=True)  # the model's default sampler: ancestral DDIM
    pipe = Pipeline.from_pretrained(DEFAULT_MODEL)
    assert pipe.components.dtype == torch.float16
    ours = _ints(pipe(prompt, steps=10, guidance=4.0, seed=3)[0])
    fp32 = _ints(Pipeline.from_pretrained(DEFAULT_MODEL, device="cpu")(prompt, steps=10, guidance=4.0, seed=3)[0])
    print(f"\ndefault model fp16 CUDA vs diffusers: max {np.abs(ours - theirs[0]).max()}; "
          f"vs fp32 CPU: max {np.abs(ours - fp32).max()}, mean {np.abs(ours - fp32).mean():.3f}")
    assert theirs[0].std() > 5  # the reference is a real image (not NaN → black)
    assert np.abs(ours - theirs[0]).max() <= 1
    result = evaluate(pipe, prompt_set(48, 24), [4.0], seeds=1)[4.0]
    print("adherence fp16 CUDA, guidance 4, 1 seed:", json.dumps(result))
    seen, heldout = result["seen"], result["heldout"]
    assert seen["size"] >= 0.85 and seen["position"] >= 0.80 and seen["shape"] >= 0.70, seen
    assert seen["color"] >= 0.80 and seen["background"] >= 0.85, seen
    assert heldout["color"] >= 0.79 and heldout["position"] >= 0.83, heldout


def test_cli_generate_on_cuda_records_fp16(tiny_models, tmp_path):
    from PIL import Image

    from latentdiff.cli import main

    out = tmp_path / "x.png"
    assert main(["generate", "a red circle", "--model", str(tiny_models[("epsilon", 8)]), "--steps", "4",
                 "-o", str(out), "--quiet"]) == 0
    assert json.loads(Image.open(out).text["latentdiff"])["dtype"] == "float16"


@pytest.mark.parametrize("precision", ["fp16", "bf16", "no"])
def test_mixed_precision_training_on_cuda_lowers_the_loss(tiny_models, dataset, tmp_path, precision):
    """As the CPU test: 30 steps lower the loss on a fixed batch below 0.7× the base model's; weights stay fp32."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    from latentdiff.training.config import load_config
    from latentdiff.training.train import train

    AcceleratorState._reset_state(reset_partial_state=True)
    model = tiny_models[("epsilon", 8)]
    cfg = load_config(None, [f"model.pretrained={model}", f"data.root={dataset}", "data.resolution=64",
                             f"train.output_dir={tmp_path / 'run'}", "train.batch_size=4", "train.max_steps=30",
                             "train.checkpoint_every=100", "train.learning_rate=1e-3", "train.ema_decay=null",
                             "train.caption_dropout=0.0", "train.progress=false", "train.lr_warmup_steps=0",
                             f"train.mixed_precision={precision}"])
    result = train(cfg)
    AcceleratorState._reset_state(reset_partial_state=True)
    before, after = fixed_batch_loss(model, dataset), fixed_batch_loss(result.model_dir, dataset)
    print(f"\ntraining on CUDA, mixed_precision={precision}: loss {before:.4f} -> {after:.4f}")
    assert after < 0.7 * before, (before, after)
    weights = load_file(str(next((result.model_dir / "unet").glob("*.safetensors"))))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_resume_on_cuda_matches_a_straight_run(tiny_models, dataset, tmp_path):
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    from latentdiff.training.config import load_config
    from latentdiff.training.train import train

    def config(out, steps):
        return load_config(None, [f"model.pretrained={tiny_models[('v_prediction', 4)]}", f"data.root={dataset}",
                                  "data.resolution=64", f"train.output_dir={out}", "train.batch_size=2",
                                  f"train.max_steps={steps}", "train.checkpoint_every=2", "train.learning_rate=1e-3",
                                  "train.ema_decay=0.9", "train.progress=false", f"train.mixed_precision={precision}"])

    AcceleratorState._reset_state(reset_partial_state=True)
    straight = train(config(tmp_path / "a", 4))
    train(config(tmp_path / "b", 2))
    resumed = train(config(tmp_path / "b", 4), resume="latest")
    AcceleratorState._reset_state(reset_partial_state=True)
    a = load_file(str(next((straight.model_dir / "unet").glob("*.safetensors"))))
    b = load_file(str(next((resumed.model_dir / "unet").glob("*.safetensors"))))
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    print(f"\nresume on CUDA ({precision}): max weight difference to a straight run {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.skipif(not (DEFAULT_MODEL / "model_index.json").is_file(), reason="weights/shapes is not built")
@pytest.mark.parametrize("method", ["direct", "npi", "nti", "ddpm"])
def test_editing_on_cuda_reconstructs_as_on_cpu(method):
    """Inversion runs in fp32 on the GPU too: reconstruction PSNR within 0.3 dB of the CPU's on two images."""
    from latentdiff.edit.inversion import invert, reconstruct
    from latentdiff.edit.metrics import psnr
    from latentdiff.models import load_components
    from latentdiff.pipelines.image_input import encode_image
    from latentdiff.shapes.evaluate_edit import _decode, shapes_examples

    scores = {}
    for device in ("cuda", "cpu"):
        c = load_components(DEFAULT_MODEL, dtype="fp32", device=device)
        values = []
        for image, _, caption in shapes_examples(2):
            inv = invert(c, encode_image(c, image), caption, method=method, steps=20, guidance=7.5)
            values.append(psnr(image, _decode(c, reconstruct(c, inv))[0]))
        scores[device] = float(np.mean(values))
    print(f"\n{method} reconstruction PSNR, CUDA {scores['cuda']:.2f} dB vs CPU {scores['cpu']:.2f} dB")
    assert abs(scores["cuda"] - scores["cpu"]) <= 0.3, scores
