"""Pixel parity with diffusers' StableDiffusionPipeline on tiny random SD-format models."""

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
)

from latentdiff.pipelines import Pipeline


def diffusers_images(path, scheduler_cls, prompt, seed, **kwargs):
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return [np.asarray(im) for im in pipe(prompt, generator=generator, **kwargs).images]


def max_diff(ours, theirs):
    return max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(ours, theirs))


@pytest.mark.parametrize("key", [("epsilon", 8), ("v_prediction", 4), "sd2"])
@pytest.mark.parametrize("sampler,negative", [("ddim", None), ("ddpm", None), ("ddim", "blurry, low quality")])
def test_pixel_parity_with_diffusers(tiny_models, key, sampler, negative):
    path = tiny_models[key]
    prompt, seed = "a red circle on a blue background", 1234
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    theirs = diffusers_images(path, cls, prompt, seed, num_inference_steps=50, guidance_scale=7.5,
                              negative_prompt=negative)
    ours = [np.asarray(im) for im in Pipeline.from_pretrained(path, device="cpu")(
        prompt, negative_prompt=negative or "", steps=50, guidance=7.5, sampler=sampler, seed=seed)]
    assert ours[0].shape == theirs[0].shape == ((32, 32, 3) if key[1] == 4 else (64, 64, 3))
    assert max_diff(ours, theirs) <= 1
    assert ours[0].std() > 5  # a real image, not a constant


@pytest.mark.parametrize("key", [("epsilon", 8), ("v_prediction", 4), "sd2"])
@pytest.mark.parametrize("sampler", ["dpmpp-2m", "dpmpp-2m-sde", "dpmpp-2m-karras", "dpmpp-2m-sde-karras"])
def test_dpm_solver_pixel_parity_with_diffusers(tiny_models, key, sampler):
    """DPMSolverMultistepScheduler.from_config(the model's scheduler), the way diffusers users swap samplers;
    two images per prompt with a generator each (the SDE variant draws noise every step)."""
    path = tiny_models[key]
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="sde-dpmsolver++" if "-sde" in sampler else "dpmsolver++",
        use_karras_sigmas=sampler.endswith("karras"))
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(s) for s in (11, 12)]
    theirs = pipe("a blue cross in the center", num_inference_steps=20, guidance_scale=6.0, generator=generators,
                  num_images_per_prompt=2).images
    ours = Pipeline.from_pretrained(path, device="cpu")(
        "a blue cross in the center", steps=20, guidance=6.0, sampler=sampler, seed=11, num_images=2)
    assert max_diff([np.asarray(im) for im in ours], [np.asarray(im) for im in theirs]) <= 1
    assert np.asarray(ours[0]).std() > 5


@pytest.mark.parametrize("key", [("epsilon", 8), ("v_prediction", 4), "sd2"])
@pytest.mark.parametrize("sampler", ["euler", "euler-a"])
def test_euler_pixel_parity_with_diffusers(tiny_models, key, sampler):
    path = tiny_models[key]
    cls = EulerAncestralDiscreteScheduler if sampler == "euler-a" else EulerDiscreteScheduler
    theirs = diffusers_images(path, cls, "a blue cross in the center", 21, num_inference_steps=20,
                              guidance_scale=6.0, num_images_per_prompt=1)
    ours = Pipeline.from_pretrained(path, device="cpu")("a blue cross in the center", steps=20, guidance=6.0,
                                                        sampler=sampler, seed=21)
    assert max_diff([np.asarray(im) for im in ours], theirs) <= 1 and np.asarray(ours[0]).std() > 5


def test_eta_and_per_image_seeds_match_diffusers(tiny_models):
    """num_images=2 uses seeds s and s+1: diffusers with a list of two generators gives the same images."""
    path = tiny_models[("epsilon", 8)]
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(s) for s in (7, 8)]
    theirs = pipe("a green square", num_inference_steps=20, guidance_scale=5.0, eta=0.7, generator=generators,
                  num_images_per_prompt=2).images
    ours = Pipeline.from_pretrained(path, device="cpu").generate(
        "a green square", steps=20, guidance=5.0, eta=0.7, seed=7, num_images=2)
    assert [g.params["seed"] for g in ours] == [7, 8]
    assert max_diff([np.asarray(g.image) for g in ours], [np.asarray(im) for im in theirs]) <= 1
    # each image is reproducible on its own from its recorded parameters
    again = Pipeline.from_pretrained(path, device="cpu")("a green square", steps=20, guidance=5.0, eta=0.7, seed=8)
    assert max_diff([np.asarray(again[0])], [np.asarray(ours[1].image)]) <= 1


def test_save_load_round_trip_gives_identical_images(tiny_models, tmp_path):
    pipe = Pipeline.from_pretrained(tiny_models[("v_prediction", 4)], device="cpu")
    before = np.asarray(pipe("a yellow triangle", steps=10, seed=3)[0])
    pipe.save_pretrained(tmp_path / "copy")
    after = np.asarray(Pipeline.from_pretrained(tmp_path / "copy", device="cpu")("a yellow triangle", steps=10, seed=3)[0])
    assert np.array_equal(before, after)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_vae_tiling_and_slicing_match_diffusers(tiny_models):
    """At 128 px the tiny VAE (sample_size 64) decodes in overlapping tiles; slicing decodes a batch image by image."""
    path = tiny_models[("epsilon", 8)]
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.vae.enable_tiling()  # diffusers 0.42: on the VAE (the pipeline's enable_vae_tiling is gone)
    pipe.vae.enable_slicing()
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    theirs = [np.asarray(im) for im in pipe(["a red circle"] * 2, num_inference_steps=5, height=128, width=128,
                                           generator=generators).images]
    ours = Pipeline.from_pretrained(path, device="cpu", vae_tiling=True, vae_slicing=True)(
        "a red circle", steps=5, height=128, width=128, seed=3, num_images=2)
    assert max_diff([np.asarray(im) for im in ours], theirs) <= 1
    plain = Pipeline.from_pretrained(path, device="cpu")("a red circle", steps=5, height=128, width=128, seed=3)
    assert max_diff([np.asarray(plain[0])], [np.asarray(ours[0])]) > 1  # tiling does change the decode
