"""Inverting real images for editing: DDIM inversion against diffusers, what each method reconstructs,
the two-branch edit sampler and the inversion file (loading the image: test_image_input.py; fixed-point
refinement: test_fixed_point_inversion.py).

Reconstruction is measured on a tiny model whose UNet output is scaled down (conv_out × 0.1): a random
UNet is so chaotic that not even DDIM at guidance 1 gives its input back, while a well-conditioned one
reproduces the situation of a trained model — DDIM inversion nearly exact at guidance 1, broken at 7.5.
"""

import pytest
import torch
from diffusers import DDIMInverseScheduler

from latentdiff.core.sampling import ddim_invert
from latentdiff.edit.inversion import (
    NTI_FAST,
    NTI_REFERENCE,
    Inversion,
    NTISettings,
    edit_guidance,
    invert,
    pivot_trajectory,
    reconstruct,
    sample_edit,
)
from latentdiff.models import decode_latents, load_components
from latentdiff.pipelines.prompts import encode_prompts

PROMPT, TARGET = "a red square and a yellow circle", "a blue square and a yellow circle"
STEPS, GUIDANCE = 10, 7.5
# The tiny text encoder moves the UNet output little per unit of embedding, so ∅ must travel further
# than in Stable Diffusion within 10 steps: a larger rate than the paper's (its 1e-2 is tested below too).
NTI_TINY = NTISettings(inner_steps=10, lr=0.1)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def psnr(a, b):
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def plain(tiny_models):
    return load_components(tiny_models[("epsilon", 8)], device="cpu")


@pytest.fixture(scope="module")
def conditioned(tiny_models):
    """The tiny ε model with its UNet output scaled by 0.1: a smooth, well-conditioned denoiser."""
    c = load_components(tiny_models[("epsilon", 8)], device="cpu")
    with torch.no_grad():
        c.unet.conv_out.weight.mul_(0.1)
        c.unet.conv_out.bias.mul_(0.1)
    return c


@pytest.fixture(scope="module")
def z0():
    return torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))  # unit variance, like SD latents


@pytest.fixture(scope="module")
def inversions(conditioned, z0):
    runs = {"ddim": None, "npi": None, "direct": None, "nti": NTI_TINY, "nti-fast": NTI_FAST,
            "nti-reference": NTI_REFERENCE, "ddpm": None}
    return {name: invert(conditioned, z0, PROMPT, method=name.split("-")[0], steps=STEPS, guidance=GUIDANCE,
                         preset=preset) for name, preset in runs.items()}


# --- DDIM inversion is diffusers' DDIMInverseScheduler -------------------------------------------


@pytest.mark.parametrize("kind, zero_snr", [(("epsilon", 8), False), (("v_prediction", 4), False),
                                            (("v_prediction", 4), True)])
def test_pivot_matches_diffusers_inverse_scheduler(tiny_models, kind, zero_snr):
    """zero_snr: a zero-terminal-SNR schedule with trailing timesteps (Lin et al.), inverting up to ᾱ_T = 0."""
    c = load_components(tiny_models[kind], device="cpu")
    if zero_snr:
        c.scheduler_config = dict(c.scheduler_config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    cond = encode_prompts(c, [PROMPT])
    scheduler = DDIMInverseScheduler.from_config(c.scheduler_config)
    scheduler.set_timesteps(STEPS)
    theirs = [x]
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = c.unet(theirs[-1], t, encoder_hidden_states=cond).sample
            theirs.append(scheduler.step(out, t, theirs[-1]).prev_sample)
        ours, refined = pivot_trajectory(c, x, cond.clone(), STEPS)
    assert refined == 0 and ours.shape[0] == len(theirs) == STEPS + 1
    for k, reference in enumerate(theirs):
        assert rel_err(ours[k], reference[0]) <= 1e-5, k
    inv = invert(c, x, PROMPT, method="ddim", steps=STEPS, guidance=GUIDANCE)
    assert rel_err(inv.x_T, theirs[-1]) <= 1e-5


# --- reconstruction (target prompt = source prompt) ----------------------------------------------


def test_methods_reconstruct_better_than_ddim_at_high_guidance(conditioned, z0, inversions):
    c = conditioned
    mse = {name: float(((reconstruct(c, inv) - z0) ** 2).mean()) for name, inv in inversions.items()}
    # sanity: DDIM inversion is nearly exact at guidance 1 here, and the drift comes from guidance 7.5
    at_one = invert(c, z0, PROMPT, method="ddim", steps=STEPS, guidance=1.0)
    assert float(((reconstruct(c, at_one) - z0) ** 2).mean()) < mse["ddim"] / 20
    # measured: ddim 1.3e-1, npi 1.0e-7 (2.3e-3 on a plain pivot), nti (tiny preset) 4.0e-4, fast 5.0e-2,
    # reference 7.0e-2, direct 0. npi samples with the conditional model alone, which retraces a fixed-point
    # pivot exactly
    assert mse["nti"] < mse["ddim"] / 30
    assert mse["npi"] < 1e-5
    assert mse["direct"] < 1e-12 and mse["ddpm"] < 1e-12
    for name in ("nti-fast", "nti-reference"):  # the paper's rate is slow on this model, but it must help
        assert mse[name] < 0.75 * mse["ddim"], name
    # in pixels: against the VAE's own round trip of the input latents
    vae_round_trip = decode_latents(c, z0)
    ddim_psnr = psnr(decode_latents(c, reconstruct(c, inversions["ddim"])), vae_round_trip)
    assert psnr(decode_latents(c, reconstruct(c, inversions["nti"])), vae_round_trip) > ddim_psnr + 10
    assert inversions["nti"].stats["nti_iterations"] <= STEPS * NTI_TINY.inner_steps
    assert inversions["nti-fast"].stats["nti_iterations"] <= STEPS * NTI_FAST.inner_steps


def test_skipping_the_null_text_optimization_is_ddim(conditioned, z0, inversions):
    skipped = invert(conditioned, z0, PROMPT, method="nti", steps=STEPS, guidance=GUIDANCE,
                     preset=NTISettings(inner_steps=0), fixed_point_iters=0)
    assert inversions["ddim"].fixed_point_iters == 0  # the baseline is plain DDIM inversion
    assert torch.equal(reconstruct(conditioned, skipped), reconstruct(conditioned, inversions["ddim"]))


@pytest.mark.parametrize("method", ["ddim", "nti", "npi", "ddpm"])
def test_same_prompt_edit_is_the_reconstruction_in_both_branches(conditioned, inversions, method):
    inv = inversions[method]
    both = sample_edit(conditioned, inv, PROMPT, guidance=inv.guidance)  # ddpm's edits default to another scale
    alone = reconstruct(conditioned, inv)
    assert both.shape == (2, 4, 8, 8)
    assert rel_err(both[0], alone[0]) < 1e-4 and rel_err(both[1], alone[0]) < 1e-4


class Recorder:
    """A controller that records the hooks' calls; ``swap`` makes after_step copy the source into the edit."""

    def __init__(self, swap=False):
        self.begun, self.latents, self.swap = [], [], swap

    def begin_step(self, i):
        self.begun.append(i)

    def after_step(self, i, latents):
        assert latents.shape[0] == 2 and self.begun[-1] == i
        self.latents.append(latents.clone())
        return torch.cat([latents[:1], latents[:1]]) if self.swap else latents


def test_direct_source_branch_follows_the_pivot_and_edit_branch_is_plain(conditioned, z0, inversions):
    c, inv = conditioned, inversions["direct"]
    assert inv.fixed_point_iters == 3  # the default for every method but the ddim baseline
    trajectory = [z0]
    schedule = c.schedule
    with torch.no_grad():  # the pivot, independently: sampling.ddim_invert with the conditional UNet
        cond = encode_prompts(c, [PROMPT])
        ddim_invert(lambda x, t: c.unet(x, t, encoder_hidden_states=cond).sample, z0, schedule,
                    schedule.timesteps(STEPS), callback=lambda d: trajectory.append(d["x"]), fixed_point_iters=3)
    recorder = Recorder()
    out = sample_edit(c, inv, TARGET, controller=recorder)
    assert recorder.begun == list(range(STEPS))
    for i, latents in enumerate(recorder.latents):  # after step i the source is z*_{N-i-1}
        assert rel_err(latents[0], trajectory[STEPS - i - 1][0]) < 1e-5, i
    assert torch.equal(out[0], z0[0])
    # the edited branch gets no offsets: with the source prompt it is the plain (ddim) reconstruction
    same = sample_edit(c, inv, PROMPT)
    ddim = invert(c, z0, PROMPT, method="ddim", steps=STEPS, guidance=GUIDANCE, fixed_point_iters=3)
    assert rel_err(same[1], reconstruct(c, ddim)[0]) < 1e-4
    assert rel_err(same[1], z0[0]) > 0.1


def test_controller_hooks_and_edit_guidance(conditioned, inversions):
    inv = inversions["nti"]
    swapped = sample_edit(conditioned, inv, TARGET, controller=Recorder(swap=True))
    assert torch.equal(swapped[0], swapped[1])  # after_step's return value is what sampling continues from
    edited = sample_edit(conditioned, inv, TARGET)
    assert rel_err(edited[1], edited[0]) > 1e-3  # another prompt, another image
    # the edit branch's guidance is separate; the source branch keeps the inversion's
    other = sample_edit(conditioned, inv, TARGET, guidance=3.0)
    assert torch.allclose(other[0], edited[0], atol=1e-5) and rel_err(other[1], edited[1]) > 1e-3


# --- the inversion file ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nti-fast", "direct", "npi", "ddpm"])
def test_save_load_round_trip_reproduces_the_edit(conditioned, inversions, tmp_path, method):
    inv = inversions[method]
    path = inv.save(tmp_path / "cat.inversion")
    assert [p.name for p in tmp_path.iterdir()] == ["cat.inversion"]  # no temporary file left behind
    loaded = Inversion.load(path, components=conditioned, size=64)
    assert loaded.settings == inv.settings and loaded.size == (64, 64)
    assert torch.equal(sample_edit(conditioned, loaded, TARGET), sample_edit(conditioned, inv, TARGET))


def test_load_refuses_another_model_size_or_file(conditioned, plain, tiny_models, inversions, tmp_path):
    path = inversions["nti-fast"].save(tmp_path / "x.inversion")

    def one_line_error(match, **kwargs):
        with pytest.raises(ValueError, match=match) as error:
            Inversion.load(kwargs.pop("file", path), **kwargs)
        assert "\n" not in str(error.value)

    one_line_error("made with another model .*invert again with this model", components=plain)  # other weights
    other = load_components(tiny_models[("v_prediction", 4)], device="cpu")
    one_line_error("made with another model", components=other)
    one_line_error("made for a 64×64 image, not 48×32", components=conditioned, size=(32, 48))
    (tmp_path / "text.inversion").write_text("hello")
    one_line_error("not an inversion file", file=tmp_path / "text.inversion")
    from safetensors.torch import save_file

    save_file({"x_T": torch.zeros(1)}, str(tmp_path / "weights.safetensors"))
    one_line_error("not a latentdiff inversion", file=tmp_path / "weights.safetensors")
    one_line_error("does not exist", file=tmp_path / "missing.inversion")


def test_same_model_in_another_dtype_is_recognized(tiny_models, tmp_path, z0):
    fp32 = load_components(tiny_models[("epsilon", 8)], device="cpu")
    inv = invert(fp32, z0, PROMPT, method="npi", steps=2, guidance=GUIDANCE)
    path = inv.save(tmp_path / "x.inversion")
    bf16 = load_components(tiny_models[("epsilon", 8)], dtype="bf16", device="cpu")
    assert Inversion.load(path, components=bf16).method == "npi"


def test_bad_arguments_fail_with_one_line(conditioned, z0):
    with pytest.raises(ValueError, match="method 'edict' is not supported"):
        invert(conditioned, z0, PROMPT, method="edict", steps=STEPS)
    with pytest.raises(ValueError, match="use at most 100 steps"):
        invert(conditioned, z0, PROMPT, method="nti", steps=150)
    with pytest.raises(ValueError, match=r"must be \(1, C, h, w\)"):
        invert(conditioned, z0[0], PROMPT, method="ddim", steps=STEPS)


def _nti_separately(c, pivot, cond, null, steps, guidance, settings):
    """Mokady et al.'s Algorithm 1 as written, with the conditional pass on its own: what the batched loop must equal."""
    import torch.nn.functional as F

    from latentdiff.edit.denoise import float32_model, guided_step, step_plan

    model, N = float32_model(c), pivot.shape[0] - 1
    z, phi, fitted = pivot[-1:], null.clone(), []
    for i, t, a, a_next in step_plan(c, steps):
        target = pivot[N - i - 1 : N - i]
        with torch.no_grad():
            out_cond = model(z, t, cond)
        phi = phi.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([phi], lr=settings.lr * (1.0 - i * settings.lr_decay))
        for _ in range(settings.inner_steps):
            loss = F.mse_loss(guided_step(c.schedule, z, model(z, t, phi), out_cond, guidance, a, a_next), target)
            (phi.grad,) = torch.autograd.grad(loss, [phi])
            optimizer.step()
            if loss.item() < settings.epsilon + i * settings.epsilon_growth:
                break
        with torch.no_grad():
            phi = phi.detach()
            z = guided_step(c.schedule, z, model(z, t, phi), out_cond, guidance, a, a_next)
        fitted.append(phi)
    return torch.cat(fitted)


def test_null_text_optimization_is_the_papers_algorithm(conditioned, z0):
    from latentdiff.edit.denoise import embed
    from latentdiff.edit.null_text import null_text_optimization

    settings = NTISettings(inner_steps=3, lr=0.05)
    with torch.no_grad():
        cond, null = embed(conditioned, [PROMPT]), embed(conditioned, [""])
        pivot, _ = pivot_trajectory(conditioned, z0, cond, STEPS)
    ours, iterations = null_text_optimization(conditioned, pivot, cond, null, STEPS, GUIDANCE, settings)
    expected = _nti_separately(conditioned, pivot, cond, null, STEPS, GUIDANCE, settings)
    assert iterations == 3 * STEPS  # this model never meets the early stop
    assert (ours - null).abs().max() > 0.1  # ∅ moved, and moved as the paper's loop moves it
    # Batching the conditional pass changes the UNet's rounding (1e-7), which Adam's normalized steps carry to
    # ~2e-5 here; a 1 % change of the learning rate moves ∅ by ~3e-2.
    other = _nti_separately(conditioned, pivot, cond, null, STEPS, GUIDANCE, NTISettings(inner_steps=3, lr=0.0505))
    assert rel_err(ours, expected) < 1e-4 < rel_err(other, expected) / 100, (rel_err(ours, expected),
                                                                            rel_err(other, expected))


# --- edit-friendly DDPM inversion -----------------------------------------------------------------


def test_ddpm_draws_each_noisy_latent_on_its_own_and_solves_each_steps_noise(conditioned, z0, inversions):
    """Huberman-Spiegelglas et al. 2023, Algorithm 1, against diffusers' DDIMScheduler at η = 1."""
    from diffusers import DDIMScheduler

    c, inv = conditioned, inversions["ddpm"]
    assert inv.seed == 0 and inv.fixed_point_iters == 0 and inv.pivot.shape == (STEPS + 1, 4, 8, 8)
    assert inv.noise.shape == (STEPS, 4, 8, 8) and torch.equal(inv.x_T, inv.pivot[-1:])
    scheduler = DDIMScheduler.from_config(c.scheduler_config)
    scheduler.set_timesteps(STEPS)
    # 1. x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε_t with the ε_t drawn at once from the seed, noisiest first
    eps = torch.randn((STEPS, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(scheduler.timesteps):
        a = float(scheduler.alphas_cumprod[t])
        assert rel_err(inv.pivot[STEPS - i], a**0.5 * z0[0] + (1 - a) ** 0.5 * eps[i]) < 1e-6, i
    assert torch.equal(inv.pivot[0], z0[0])
    # 2. diffusers' guided ancestral DDIM step (η = 1) from x_t plus the stored noise lands on x_{t−1}
    cond, null = encode_prompts(c, [PROMPT]), encode_prompts(c, [""])
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            x = inv.pivot[STEPS - i : STEPS - i + 1]
            u, k = c.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([null, cond])).sample.chunk(2)
            mean = scheduler.step(u + GUIDANCE * (k - u), t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
            assert rel_err(mean + inv.noise[i], inv.pivot[STEPS - i - 1]) < 1e-5, i
            std = float(scheduler._get_variance(t, t - 1000 // STEPS)) ** 0.5 if i < STEPS - 1 else 0.0
            assert std == 0 or float(inv.noise[i].std()) > 0.3 * std  # the noise is of the step's own size


def test_ddpm_edits_keep_the_noise_and_depend_on_the_seed(conditioned, z0, inversions):
    c, inv = conditioned, inversions["ddpm"]
    recorder = Recorder()
    out = sample_edit(c, inv, TARGET, controller=recorder)
    for i, latents in enumerate(recorder.latents):  # the source branch is pinned to the trajectory
        assert torch.equal(latents[0], inv.pivot[STEPS - i - 1]), i
    assert torch.equal(out[0], z0[0]) and rel_err(out[1], z0[0]) > 1e-3  # another prompt, another image
    same = invert(c, z0, PROMPT, method="ddpm", steps=STEPS, guidance=GUIDANCE, seed=0)
    other = invert(c, z0, PROMPT, method="ddpm", steps=STEPS, guidance=GUIDANCE, seed=1)
    assert torch.equal(same.noise, inv.noise) and rel_err(other.x_T, inv.x_T) > 0.1
    # with the source prompt any seed gives the image back in the (unpinned) edited branch
    assert rel_err(sample_edit(c, other, PROMPT, guidance=GUIDANCE)[1], z0[0]) < 1e-4
    # by default the noise is solved at guidance 1 and edits take half the model's (7.5: the tiny model has no
    # generation defaults); the other methods edit at the guidance they inverted for
    default = invert(c, z0, PROMPT, method="ddpm", steps=2)
    assert default.guidance == 1.0 and edit_guidance(c, default) == 3.75 and edit_guidance(c, default, 2) == 2.0
    assert edit_guidance(c, inversions["nti"]) == GUIDANCE


def test_ddpm_file_without_its_noise_is_refused(inversions, tmp_path):
    from dataclasses import replace

    path = replace(inversions["ddpm"], noise=None).save(tmp_path / "x.inversion")
    with pytest.raises(ValueError, match="inconsistent"):
        Inversion.load(path)


def test_ddpm_edits_can_skip_the_first_steps(conditioned, z0, inversions):
    c, inv = conditioned, inversions["ddpm"]
    recorder = Recorder()
    skipped = sample_edit(c, inv, TARGET, controller=recorder, skip=0.3, guidance=GUIDANCE)
    assert recorder.begun == list(range(3, STEPS))  # ⌊0.3·10⌋ steps skipped, from the trajectory's z*_7
    assert torch.equal(skipped[0], z0[0])
    full = sample_edit(c, inv, TARGET, guidance=GUIDANCE)
    assert rel_err(skipped[1], z0[0]) < rel_err(full[1], z0[0])  # skipping weakens the edit
    assert rel_err(sample_edit(c, inv, PROMPT, skip=0.5, guidance=GUIDANCE)[1], z0[0]) < 1e-4
    for method, skip, message in (("nti", 0.3, "needs the noisy latents of a ddpm inversion"),
                                  ("ddpm", 1.0, r"must be a fraction of the steps in \[0, 1\)")):
        with pytest.raises(ValueError, match=message):
            sample_edit(c, inversions[method], TARGET, skip=skip)


def test_a_controller_restarts_when_an_edit_skips_steps(tiny_models):
    from latentdiff.edit.attention import AttentionController

    c = load_components(tiny_models[("epsilon", 8)], device="cpu")
    controller = AttentionController(c.tokenizer, PROMPT, TARGET, STEPS, blend_words=["square"])
    controller._maps = {4: torch.ones(2, 4)}
    controller.begin_step(3)
    assert controller._maps == {}  # the first step of a run
    controller._maps = {4: torch.ones(2, 4)}
    controller.begin_step(4)
    assert 4 in controller._maps  # the run goes on
    controller.begin_step(3)
    assert controller._maps == {}  # a new run
