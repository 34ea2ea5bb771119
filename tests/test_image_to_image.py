"""img2img and inpainting: pixel parity with diffusers' StableDiffusionImg2ImgPipeline and
StableDiffusionInpaintPipeline on tiny models (same seed), per-image seeds, the composite, and bad input."""

import functools

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
)
from PIL import Image

from latentdiff.pipelines import Pipeline

SCHEDULERS = {"ddim": DDIMScheduler, "dpmpp-2m": DPMSolverMultistepScheduler, "euler-a": EulerAncestralDiscreteScheduler}
PROMPT, SEED, STEPS = "a red circle on a blue background", 5, 20


def picture(size=64, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8"))


def box_mask(size=64):
    m = np.zeros((size, size), dtype=np.uint8)
    m[size // 4 : 3 * size // 4, size // 8 : 5 * size // 8] = 255
    return Image.fromarray(m)


def ints(image):
    return np.asarray(image, dtype=int)


@functools.lru_cache(maxsize=None)
def diffusers_pipeline(cls, path):
    return cls.from_pretrained(path, safety_checker=None, requires_safety_checker=False)


@functools.lru_cache(maxsize=None)
def ours(path):
    return Pipeline.from_pretrained(path, device="cpu")


def reference(cls, path, sampler, steps=STEPS, **kwargs):
    pipe = diffusers_pipeline(cls, path)
    pipe.scheduler = SCHEDULERS[sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, generator=torch.Generator().manual_seed(SEED),
               **kwargs)
    image = ints(out.images[0])
    assert 5 < image.std() and np.isfinite(image).all()  # a real reference image
    return image


@pytest.mark.parametrize("key", [("epsilon", 8), ("v_prediction", 4)])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m"])
@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_img2img_pixel_parity_with_diffusers(tiny_models, key, sampler, strength):
    path, size = tiny_models[key], 64 if key[1] == 8 else 32
    image = picture(size)
    theirs = reference(StableDiffusionImg2ImgPipeline, path, sampler, image=image, strength=strength)
    made = ours(path).img2img(PROMPT, image, strength=strength, steps=STEPS, guidance=7.5, sampler=sampler,
                              seed=SEED)
    assert made[0].image.size == image.size and made[0].params["strength"] == strength
    assert np.abs(ints(made[0].image) - theirs).max() <= 1


@pytest.mark.parametrize("key", [("epsilon", 8), "inpaint"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m", "euler-a"])
@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_inpaint_pixel_parity_with_diffusers(tiny_models, key, sampler, strength):
    """An ordinary (4-channel, latent blending) and an inpainting (9-channel) UNet, mask not blurred, no composite."""
    path, image, mask = tiny_models[key], picture(), box_mask()
    theirs = reference(StableDiffusionInpaintPipeline, path, sampler, image=image, mask_image=mask, strength=strength)
    made = ours(path).inpaint(PROMPT, image, mask, strength=strength, steps=STEPS, guidance=7.5, sampler=sampler,
                              seed=SEED, mask_blur=0, composite=False)
    assert np.abs(ints(made[0].image) - theirs).max() <= 1


def test_each_image_is_reproducible_alone(tiny_models):
    pipe = Pipeline.from_pretrained(tiny_models[("epsilon", 8)], device="cpu")
    image, mask = picture(), box_mask()
    for run in (lambda **k: pipe.img2img(PROMPT, image, strength=0.6, steps=6, **k),
                lambda **k: pipe.inpaint(PROMPT, image, mask, strength=0.8, steps=6, **k)):
        both = run(seed=3, num_images=2)
        alone = run(seed=4)
        assert np.array_equal(ints(both[1].image), ints(alone[0].image)) and both[1].params["seed"] == 4
        assert not np.array_equal(ints(both[0].image), ints(both[1].image))


def test_composite_keeps_the_input_outside_the_mask(tiny_models):
    """The box covers rows 16–47, columns 8–39. Every pixel outside it is the input's, blurred or not; inside, away
    from the edge, the pixels are the generated ones; blurred, the seam just inside blends the two."""
    pipe = Pipeline.from_pretrained(tiny_models[("epsilon", 8)], device="cpu")
    image, mask = picture(), box_mask()
    rows, cols = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    outside = np.asarray(mask) == 0
    core = (rows >= 24) & (rows < 40) & (cols >= 16) & (cols < 32)
    for blur, kept in ((0, outside), (2, outside)):
        out = ints(pipe.inpaint(PROMPT, image, mask, steps=6, mask_blur=blur)[0].image)
        raw = ints(pipe.inpaint(PROMPT, image, mask, steps=6, mask_blur=blur, composite=False)[0].image)
        assert np.array_equal(out[kept], ints(image)[kept]), blur
        assert not np.array_equal(raw[kept], ints(image)[kept])  # without it, the decode changes those pixels
        assert np.array_equal(out[core], raw[core])
        if blur:  # across the edge the two are blended
            edge = (rows == 16) & (cols >= 12) & (cols < 36)
            assert not np.array_equal(out[edge], ints(image)[edge]) and not np.array_equal(out[edge], raw[edge])


def test_bad_input_is_one_line(tiny_models, tmp_path):
    pipe = Pipeline.from_pretrained(tiny_models[("epsilon", 8)], device="cpu")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    cases = [
        (lambda: pipe.img2img(PROMPT, picture(), strength=0.0), r"strength=0.0 must be in \(0, 1\]"),
        (lambda: pipe.img2img(PROMPT, picture(), strength=1.5), r"strength=1.5 must be in \(0, 1\]"),
        (lambda: pipe.img2img(PROMPT, not_an_image), r"cannot read image '.*notes.png'"),
        (lambda: pipe.inpaint(PROMPT, picture(), not_an_image), r"cannot read image '.*notes.png'"),
        (lambda: pipe.inpaint(PROMPT, picture(), box_mask(), mask_blur=-1), r"mask_blur=-1 must be >= 0"),
        (lambda: Pipeline.from_pretrained(tiny_models["inpaint"], device="cpu")(PROMPT, steps=2),
         r"inpainting UNet \(9 input channels"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("upscaler", ["lanczos", "latent"])
def test_hires_fix_is_generate_upscale_and_diffusers_img2img(tiny_models, upscaler):
    """The second pass equals diffusers' img2img given the upscaled first image (lanczos: as a picture; latent: as
    bilinear-upscaled latents, which its img2img takes as they are), same seed."""
    import torch.nn.functional as F

    path = tiny_models[("epsilon", 8)]
    pipe = Pipeline.from_pretrained(path, device="cpu")
    ours = pipe.hires_fix(PROMPT, scale=1.5, strength=0.6, hires_steps=8, upscaler=upscaler, steps=6, seed=SEED,
                          guidance=7.5, sampler="dpmpp-2m")[0]
    assert ours.image.size == (96, 96) and ours.params["hires_scale"] == 1.5 and ours.params["height"] == 64
    assert ours.params["steps"] == 6 and ours.params["hires_steps"] == 8
    cfg, prompts, seeds = pipe.batch(PROMPT, None, dict(steps=6, seed=SEED, guidance=7.5, sampler="dpmpp-2m"))
    base = pipe.sample(prompts, seeds, cfg)
    if upscaler == "latent":
        image = F.interpolate(base, size=(12, 12), mode="bilinear", align_corners=False)
    else:
        image = pipe.decode(base, prompts, seeds, cfg)[0].image.resize((96, 96), Image.Resampling.LANCZOS)
    theirs = reference(StableDiffusionImg2ImgPipeline, path, "dpmpp-2m", steps=8, image=image, strength=0.6)
    assert np.abs(ints(ours.image) - theirs).max() <= 1
