"""The committed offline default model: complete, within budget, loads in diffusers and in latentdiff alike."""

import numpy as np
import pytest
import torch

from latentdiff.models import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "model_index.json").is_file(),
                                reason="weights/shapes is not built in this checkout")


def test_size_budget_and_fp16_storage():
    from safetensors import safe_open

    size = sum(f.stat().st_size for f in DEFAULT_MODEL.rglob("*") if f.is_file())
    assert size <= 40 * 2**20, f"{size / 2**20:.1f} MB"
    for file in DEFAULT_MODEL.rglob("*.safetensors"):
        with safe_open(file, "pt") as f:
            assert all(f.get_slice(k).get_dtype() in ("F16", "I64") for k in f.keys())
    assert all("_name_or_path" not in f.read_text() for f in DEFAULT_MODEL.rglob("config.json"))


def test_same_image_as_diffusers():
    """Same pixels as diffusers' pipeline at the model's default, ancestral DDIM (η = 1).

    diffusers' float32 DDIMScheduler is not a valid reference here on every machine: at the first step (t = 999,
    ᾱ_t = 0 on this zero-terminal-SNR schedule) 1 − ᾱ_prev − σ_t² is 0 in exact arithmetic, and its float32
    ᾱ table rounds it to ±6e-8 depending on the CPU's kernels; the negative case is a NaN and a black image.
    The reference is diffusers' pipeline handed our float64 ᾱ table (as tests/test_scheduler_parity.py does),
    where that term is exactly 0 (correctly rounded float64 arithmetic, the same on every CPU); it is checked to
    be finite before the comparison. Where diffusers' own float32 run gives NaN, ours must still be finite."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from latentdiff.pipelines import Pipeline

    prompt = "a large red circle in the top left corner on a white background"
    pipe = Pipeline.from_pretrained(DEFAULT_MODEL, device="cpu")
    assert pipe.defaults.sampler == "ddim" and pipe.defaults.eta == 1.0  # the model's default: ancestral DDIM
    ref = StableDiffusionPipeline.from_pretrained(DEFAULT_MODEL, torch_dtype=torch.float32, safety_checker=None)
    ref.set_progress_bar_config(disable=True)

    def diffusers_latents(float64_table: bool):
        ref.scheduler = DDIMScheduler.from_config(ref.scheduler.config)
        if float64_table:
            schedule = pipe.components.schedule
            ref.scheduler.alphas_cumprod = schedule.alphas_cumprod
            ref.scheduler.final_alpha_cumprod = torch.tensor(schedule.final_alpha_cumprod, dtype=torch.float64)
        return ref(prompt, num_inference_steps=10, guidance_scale=4.0, eta=1.0, output_type="latent",
                   generator=torch.Generator().manual_seed(3)).images

    latents = diffusers_latents(float64_table=True)
    assert torch.isfinite(latents).all(), "the float64-table reference is not finite; it cannot be compared to"
    with torch.no_grad():
        image = ref.image_processor.postprocess(ref.vae.decode(latents / ref.vae.config.scaling_factor).sample)[0]
    theirs = np.asarray(image, dtype=int)
    assert theirs.std() > 5  # a real image, not a flat one
    finite = []
    result = pipe.generate(prompt, steps=10, guidance=4.0, seed=3,
                           callback=lambda step: finite.append(bool(torch.isfinite(step["x"]).all())))
    ours = np.asarray(result[0].image, dtype=int)
    assert ours.shape == (64, 64, 3)
    assert np.abs(ours - theirs).max() <= 1
    if not torch.isfinite(diffusers_latents(float64_table=False)).all():  # diffusers' float32 table, on this CPU
        assert all(finite) and len(finite) == 10  # ours stays finite where diffusers' does not


def test_recipe_schedule_is_the_shipped_one():
    """`make weights` ends on configs/shapes/scheduler-finetune.json when stage 4 exists (else scheduler.json):
    the weights must carry the schedule their last stage was trained on."""
    import json
    from pathlib import Path

    recipe_dir = Path(__file__).parents[1] / "configs" / "shapes"
    last = recipe_dir / "scheduler-finetune.json"
    recipe = json.loads((last if (recipe_dir / "unet-finetune.yaml").is_file() else recipe_dir / "scheduler.json")
                        .read_text())
    shipped = json.loads((DEFAULT_MODEL / "scheduler" / "scheduler_config.json").read_text())
    assert {k: shipped.get(k) for k in recipe} == recipe


@pytest.mark.slow
def test_adherence_and_vae_ceiling_stay_at_version_6_levels():
    """Guards the shipped model against a broken rebuild or loader: seen and held-out prompts at the model's
    default sampler (ancestral DDIM) and guidance, two seeds each (the recorded `latentdiff eval` table: version 6
    reads seen shape 95.8 %, color, size, position and background 100 %; held-out shape 93.8 %, color 89.6 %,
    position 100 %), against floors under that; the VAE ceiling too (version 6: seen shape 99 %). One seed is
    too few for the floors since the sampler draws noise: its 24 held-out prompts read shape 79 % (5 misses),
    where 4 seeds on two prompt sets read 89.6 and 91.7 %. Version 5 fails it (VAE shape ceiling 91 %,
    held-out shape 73 % over 2 seeds, seen color 90 %), version 4 too (held-out color 71 %, position 79 %)."""
    from latentdiff.models import vae_round_trip
    from latentdiff.pipelines import Pipeline
    from latentdiff.shapes.evaluate import evaluate, prompt_set, round_trip_ceiling

    pipe = Pipeline.from_pretrained(DEFAULT_MODEL, device="cpu")
    prompts = prompt_set(48, 24)
    result = evaluate(pipe, prompts, [4.0], seeds=2)[4.0]
    seen, heldout = result["seen"], result["heldout"]
    assert seen["size"] >= 0.9 and seen["position"] >= 0.9 and seen["shape"] >= 0.9, seen
    assert seen["color"] >= 0.93 and seen["background"] >= 0.9, seen
    assert heldout["shape"] >= 0.85 and heldout["color"] >= 0.75 and heldout["position"] >= 0.9, heldout
    ceiling = round_trip_ceiling(lambda images: vae_round_trip(pipe.components, images), prompts, seeds=1)["seen"]
    assert ceiling["color"] == 1.0 and ceiling["shape"] >= 0.95 and ceiling["position"] == 1.0, ceiling


@pytest.mark.slow
def test_editing_the_default_model_reconstructs_and_swaps_colors():
    """eval-edit on 8 images at the model's default guidance: direct reconstructs exactly and its word swaps
    keep near the true edit's ceiling (version 6: target color 100 %, mask IoU ≥ 0.8 88 %; ceiling 100 / 100 %;
    version 5: 88 / 75 %, ceiling 100 / 88 %); npi on the fixed-point pivot is within 0.3 dB of the VAE round
    trip (39.45 vs 39.73 dB; on a plain pivot a zero-SNR model gives it back at 13.5 dB)."""
    from latentdiff.models import load_components
    from latentdiff.shapes.evaluate_edit import evaluate_editing

    summary = evaluate_editing(load_components(DEFAULT_MODEL, device="cpu"), 8, ("direct", "npi"))
    vae, direct, npi = summary["vae"], summary["direct"], summary["npi"]
    assert vae["color_ok"] == 1.0 and vae["iou_ok"] >= 0.95, vae
    assert direct["psnr"] == pytest.approx(vae["psnr"], abs=1e-2), direct
    assert direct["color_ok"] >= 0.85 and direct["iou_ok"] >= 0.75, direct
    assert npi["psnr"] >= vae["psnr"] - 0.5, npi


@pytest.mark.slow
def test_ddpm_word_swaps_meet_the_issue_target():
    """Issue 6's word-swap target on 16 images with the default method: the analyzer reads the target color on
    ≥ 90 % and the object mask keeps IoU ≥ 0.8 on ≥ 90 % (version 6, seed 0: 100 % and 94 %; on 32 images 100 %
    and 91 %), and the reconstruction is exact (the VAE round trip)."""
    from latentdiff.models import load_components
    from latentdiff.shapes.evaluate_edit import evaluate_editing

    summary = evaluate_editing(load_components(DEFAULT_MODEL, device="cpu"), 16, ("ddpm",))
    vae, ddpm = summary["vae"], summary["ddpm"]
    assert ddpm["psnr"] == pytest.approx(vae["psnr"], abs=1e-2), ddpm
    assert ddpm["color_ok"] >= 0.9 and ddpm["iou_ok"] >= 0.9, ddpm


def test_gpu_recipe_resolves_every_stage_and_matches_the_shipped_vae():
    """configs/shapes-gpu (version 6's recipe) holds what differs and inherits the rest from configs/shapes."""
    import json
    from pathlib import Path

    from latentdiff.build.recipe import Recipe

    recipe = Recipe(Path(__file__).parents[1] / "configs" / "shapes-gpu")
    for name in ("world.yaml", "vae.yaml", "clip.yaml", "unet.yaml", "unet-finetune.yaml", "scheduler.json",
                 "scheduler-finetune.json", "generation.json"):
        assert recipe.path(name) is not None, name
    assert recipe.path("scheduler.json").parent.name == "shapes"  # inherited
    shipped = json.loads((DEFAULT_MODEL / "vae" / "config.json").read_text())
    assert shipped["block_out_channels"] == recipe.read("vae.yaml")["block_out_channels"]


@pytest.mark.slow
def test_null_text_inversion_is_within_1_db_of_the_vae_round_trip():
    """Issue 6's reconstruction target for the default nti preset at guidance 7.5: 4 images at the model's 30
    steps, version 6 is 0.75 dB under the VAE round trip (40.40 dB; the preset up to version 5, one Adam update
    at lr 0.14 per step, is 2.10 dB under it and fails); 8 images at the issue's 50 steps, 0.87 dB under
    (39.73 dB). (8 images at 30 steps: 1.03 dB, two chaotic images set the mean; benchmarks/README.md.)"""
    from latentdiff.models import load_components
    from latentdiff.shapes.evaluate_edit import evaluate_editing

    components = load_components(DEFAULT_MODEL, device="cpu")
    for images, steps in ((4, None), (8, 50)):
        summary = evaluate_editing(components, images, ("nti",), steps=steps, guidance=7.5)
        assert summary["nti"]["psnr"] >= summary["vae"]["psnr"] - 1.0, (images, steps, summary)
