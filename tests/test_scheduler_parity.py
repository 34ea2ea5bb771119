"""Our samplers against diffusers' DDIMScheduler, DDPMScheduler and DDIMInverseScheduler.

Each reference scheduler is built from the same config as our Schedule and is handed the same ᾱ
table (ours is float64, diffusers' own is a float32 cumprod; `test_schedule_tables_match` compares
the tables themselves and `test_float32_result_is_closer_to_float64_truth` shows whose rounding the
remaining gap is). Timesteps, equations and the order of random draws are then compared:
float32 to ≤ 1e-5 relative, float64 to ≤ 1e-12.
"""

import itertools

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler
from fakes import fake_denoiser, rel_err

from latentdiff.core.analytic import GaussianDenoiser
from latentdiff.core.sampling import ddim_invert, ddim_step, ddpm_step, sample_ddim, sample_ddpm
from latentdiff.core.schedule import Schedule

SCHEDULES = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
}
PREDICTIONS = ["epsilon", "v_prediction", "sample"]
SPACINGS = ["leading", "trailing", "linspace"]
ETAS = [0.0, 0.5, 1.0]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def same_table(ref, schedule: Schedule):
    """Give a diffusers scheduler our float64 ᾱ table, so that only the step math is compared."""
    ref.betas = schedule.betas
    ref.alphas = 1 - schedule.betas
    ref.alphas_cumprod = schedule.alphas_cumprod
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    for name in ("final_alpha_cumprod", "initial_alpha_cumprod"):
        if hasattr(ref, name):
            setattr(ref, name, torch.tensor(schedule.final_alpha_cumprod, dtype=torch.float64))
    return ref


def latents(dtype=torch.float32, seed=0):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def reference_loop(ref, x, seed=1, denoiser=fake_denoiser, **step_kwargs):
    generator = torch.Generator().manual_seed(seed)
    for t in ref.timesteps:
        x = ref.step(denoiser(x, int(t)), t, x, generator=generator, **step_kwargs).prev_sample
    return x


def build(cls, steps, **config):
    ref = cls(**config)
    ref.set_timesteps(steps)
    ours = Schedule.from_config(dict(ref.config))
    return same_table(ref, ours), ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("schedule_name,prediction,spacing", list(itertools.product(SCHEDULES, PREDICTIONS, SPACINGS)))
def test_ddim_matches_diffusers(schedule_name, prediction, spacing, dtype):
    for eta, clip, steps in [(0.0, False, 50), (0.5, False, 50), (1.0, False, 50), (0.5, True, 20), (0.0, False, 7)]:
        config = dict(
            SCHEDULES[schedule_name], prediction_type=prediction, timestep_spacing=spacing,
            steps_offset=1, clip_sample=clip, set_alpha_to_one=False,
        )
        ref, schedule = build(DDIMScheduler, steps, **config)
        timesteps = schedule.timesteps(steps)
        assert timesteps == ref.timesteps.tolist()
        x = latents(dtype)
        # single steps from the same x, explicit noise
        stride = schedule.num_train_timesteps // steps
        for t in timesteps:
            out, noise = fake_denoiser(x, t), latents(dtype, seed=t)
            a, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t - stride)
            sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
            ours = ddim_step(x, out, a, a_prev, prediction, sigma=sigma, noise=noise if eta > 0 else None,
                             clip=1.0 if clip else None)
            theirs = ref.step(out, t, x, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
            assert rel_err(ours, theirs) <= TOL[dtype], (eta, t)
        # full loop, noise from the same seeded generator
        ours = sample_ddim(fake_denoiser, x, schedule, timesteps, eta=eta, generator=torch.Generator().manual_seed(1))
        theirs = reference_loop(ref, x, eta=eta)
        assert ours.dtype == dtype
        assert rel_err(ours, theirs) <= TOL[dtype], (eta, clip, steps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("schedule_name,prediction,spacing", list(itertools.product(SCHEDULES, PREDICTIONS, SPACINGS)))
def test_ddpm_matches_diffusers(schedule_name, prediction, spacing, dtype):
    runs = [("fixed_small", False, 50), ("fixed_large", False, 50), ("fixed_small", True, 20), ("fixed_large", True, 9)]
    if spacing == "leading":
        runs.append(("fixed_small", False, 1000))  # the full chain
    for variance_type, clip, steps in runs:
        config = dict(
            SCHEDULES[schedule_name], prediction_type=prediction, timestep_spacing=spacing,
            steps_offset=int(steps < 1000), clip_sample=clip, variance_type=variance_type,
        )
        ref, schedule = build(DDPMScheduler, steps, **config)
        timesteps = schedule.timesteps(steps)
        assert timesteps == ref.timesteps.tolist()
        x = latents(dtype)
        for t in timesteps[:: max(1, steps // 25)]:  # single steps
            j = timesteps.index(t)
            a_prev = schedule.alpha_bar(timesteps[j + 1]) if j + 1 < len(timesteps) else 1.0
            out = fake_denoiser(x, t)
            # diffusers draws the step's noise from the generator (only for t > 0): replay that draw
            theirs = ref.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=dtype) if t > 0 else None
            ours = ddpm_step(x, out, schedule.alpha_bar(t), a_prev, prediction, variance_type=variance_type,
                             noise=noise, clip=1.0 if clip else None)
            assert rel_err(ours, theirs) <= TOL[dtype], (variance_type, t)
        # the full chain amplifies any inconsistency of the fake: there, use the exact Gaussian denoiser
        denoiser = GaussianDenoiser(schedule) if steps == 1000 else fake_denoiser
        ours = sample_ddpm(denoiser, x, schedule, timesteps, generator=torch.Generator().manual_seed(1))
        theirs = reference_loop(ref, x, denoiser=denoiser)
        assert rel_err(ours, theirs) <= TOL[dtype], (variance_type, clip, steps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("schedule_name,prediction,spacing",
                         list(itertools.product(SCHEDULES, PREDICTIONS, ["leading", "trailing"])))
def test_ddim_inversion_matches_diffusers(schedule_name, prediction, spacing, dtype):
    # with prediction 'sample', ε is undefined at ᾱ = 1, so set_alpha_to_one=True is excluded for it
    for set_alpha_to_one, clip, steps in [(False, False, 50), (prediction != "sample", False, 10), (False, True, 20)]:
        config = dict(
            SCHEDULES[schedule_name], prediction_type=prediction, timestep_spacing=spacing,
            steps_offset=1, clip_sample=clip, set_alpha_to_one=set_alpha_to_one,
        )
        ref, schedule = build(DDIMInverseScheduler, steps, **config)
        timesteps = schedule.timesteps(steps)
        assert timesteps[::-1] == ref.timesteps.tolist()
        x = latents(dtype)
        ours = ddim_invert(fake_denoiser, x, schedule, timesteps)
        theirs = x
        for t in ref.timesteps:
            theirs = ref.step(fake_denoiser(theirs, int(t)), t, theirs).prev_sample
        assert rel_err(ours, theirs) <= TOL[dtype], (set_alpha_to_one, clip, steps)


@pytest.mark.parametrize("prediction,spacing", [("v_prediction", "trailing"), ("v_prediction", "linspace"),
                                                ("sample", "trailing"), ("epsilon", "leading")])
def test_zero_terminal_snr_matches_diffusers(prediction, spacing):
    config = dict(SCHEDULES["scaled_linear"], prediction_type=prediction, timestep_spacing=spacing,
                  steps_offset=1, clip_sample=False, rescale_betas_zero_snr=True)
    for cls, sample in [(DDIMScheduler, sample_ddim), (DDPMScheduler, sample_ddpm)]:
        ref, schedule = build(cls, 25, **config)
        assert schedule.alphas_cumprod[-1] == 0
        x = latents()
        ours = sample(fake_denoiser, x, schedule, schedule.timesteps(25), generator=torch.Generator().manual_seed(1))
        assert rel_err(ours, reference_loop(ref, x)) <= 1e-5


def test_epsilon_at_zero_snr_fails_loudly():
    schedule = Schedule.make("scaled_linear", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    with pytest.raises(ValueError, match="zero SNR"):
        sample_ddim(fake_denoiser, latents(), schedule, schedule.timesteps(10))


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_schedule_tables_match(schedule_name):
    """Our float64 β and ᾱ equal diffusers' float32 ones up to float32 rounding."""
    ref = DDPMScheduler(**SCHEDULES[schedule_name])
    ours = Schedule.from_config(dict(ref.config))
    assert ours.betas.dtype == torch.float64
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=0, atol=1e-6)


@pytest.mark.parametrize("schedule_name,prediction", list(itertools.product(SCHEDULES, PREDICTIONS)))
def test_float32_result_is_closer_to_float64_truth(schedule_name, prediction):
    """The gap to stock diffusers in float32 is diffusers' float32 ᾱ, not our arithmetic.

    Truth: diffusers' own step equations run in float64 on the float64 table. Our float32 loop stays
    within 1e-6 of it and never farther than stock float32 diffusers.
    """
    for spacing in SPACINGS:
        config = dict(SCHEDULES[schedule_name], prediction_type=prediction, timestep_spacing=spacing,
                      steps_offset=1, clip_sample=False, set_alpha_to_one=False)
        stock = DDIMScheduler(**config)
        stock.set_timesteps(50)
        ref, schedule = build(DDIMScheduler, 50, **config)
        x = latents()
        truth = reference_loop(ref, x.double())
        ours = sample_ddim(fake_denoiser, x, schedule, schedule.timesteps(50)).double()
        theirs = reference_loop(stock, x).double()
        assert rel_err(ours, truth) <= 1e-6
        assert rel_err(ours, truth) <= rel_err(theirs, truth) * 1.5 + 1e-7


def test_selfcheck_passes_and_covers_every_sampler():
    from latentdiff.core.selfcheck import run

    rows = run()
    assert all(value <= bound for _, value, bound in rows), rows
    names = " ".join(name for name, _, _ in rows)
    for sampler in ("DDIM eta=0", "DDIM eta=1", "DDPM", "DPM-Solver++ 2M vs", "DPM-Solver++ 2M SDE", "Euler vs",
                    "Euler ancestral", "inversion"):
        assert sampler in names
