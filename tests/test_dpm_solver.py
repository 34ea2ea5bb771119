"""DPM-Solver++ 2M (and 2M SDE) against diffusers' DPMSolverMultistepScheduler and against closed-form math."""

import itertools
import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from fakes import fake_denoiser, rel_err

from latentdiff.core.analytic import GaussianDenoiser
from latentdiff.core.dpm_solver import dpm_timesteps, karras_timesteps, sample_dpmpp_2m
from latentdiff.core.sampling import sample_ddim
from latentdiff.core.schedule import Schedule

SCHEDULES = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
}


def latents(seed=0, shape=(2, 4, 8, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def reference(config, steps, x, denoiser, sde, seeds=(5, 6), karras=False, table=None):
    """diffusers' result; ``table``: our float64 ᾱ (zero SNR lifted as diffusers lifts it) replaces its float32 one."""
    config = {k: v for k, v in config.items() if k != "clip_sample"}  # a DDIM key, here to build our Schedule
    ref = DPMSolverMultistepScheduler(**config, algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++",
                                      use_karras_sigmas=karras)
    if table is not None:
        ref.alphas_cumprod = table.where(table > 0, torch.tensor(2.0**-24, dtype=table.dtype))
    ref.set_timesteps(steps)
    reference.sigmas = ref.sigmas[:-1].tolist()
    gens = generators(*seeds)
    for t in ref.timesteps:
        x = ref.step(denoiser(x, int(t)), t, x, generator=gens).prev_sample
    return x, ref.timesteps.tolist()


@pytest.mark.parametrize("sde", [False, True])
@pytest.mark.parametrize("schedule_name,prediction,spacing", list(itertools.product(
    SCHEDULES, ["epsilon", "v_prediction", "sample"], ["leading", "trailing", "linspace"])))
def test_matches_diffusers(schedule_name, prediction, spacing, sde):
    """Same timesteps, same result from the same seeds (diffusers keeps a float32 ᾱ table, we a float64 one)."""
    config = dict(SCHEDULES[schedule_name], prediction_type=prediction, timestep_spacing=spacing, steps_offset=1,
                  clip_sample=False)
    schedule = Schedule.from_config(config)
    x = latents()
    for steps in (1, 2, 7, 25):
        ts = dpm_timesteps(steps, 1000, spacing, 1)
        theirs, their_ts = reference(config, steps, x, fake_denoiser, sde)
        assert ts == their_ts
        ours = sample_dpmpp_2m(fake_denoiser, x, schedule, ts, sde=sde, generator=generators(5, 6))
        assert rel_err(ours, theirs) <= 1e-5, steps


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
@pytest.mark.parametrize("sde", [False, True])
def test_zero_terminal_snr_matches_diffusers(spacing, sde):
    """ᾱ_T = 0 makes λ_T infinite; both lift it to 2⁻²⁴ (trailing spacing starts there)."""
    config = dict(SCHEDULES["scaled_linear"], prediction_type="v_prediction", timestep_spacing=spacing,
                  steps_offset=1, clip_sample=False, rescale_betas_zero_snr=True)
    schedule = Schedule.from_config(config)
    x = latents()
    ts = dpm_timesteps(20, 1000, spacing, 1)
    theirs, _ = reference(config, 20, x, fake_denoiser, sde)
    ours = sample_dpmpp_2m(fake_denoiser, x, schedule, ts, sde=sde, generator=generators(5, 6))
    assert torch.isfinite(ours).all() and rel_err(ours, theirs) <= 1e-5


@pytest.mark.parametrize("sde", [False, True])
@pytest.mark.parametrize("schedule_name,prediction,zero_snr", [
    ("scaled_linear", "epsilon", False), ("scaled_linear", "v_prediction", False), ("linear", "sample", False),
    ("scaled_linear", "v_prediction", True)])
def test_karras_sigmas_match_diffusers(schedule_name, prediction, zero_snr, sde):
    """use_karras_sigmas=True: the same noise levels, the same rounded timesteps, the same result. Its levels come
    from 1 − ᾱ, which a float32 ᾱ table gives to ~1e-4 near ᾱ_0 ≈ 0.999, so diffusers gets our float64 table."""
    config = dict(SCHEDULES[schedule_name], prediction_type=prediction, timestep_spacing="trailing", steps_offset=1,
                  clip_sample=False, rescale_betas_zero_snr=zero_snr)
    schedule = Schedule.from_config(config)
    x = latents()
    # zero SNR: from 20 steps on the first two timesteps round to 999, and diffusers then starts at its second
    # level (its rule for a repeated first timestep) and runs past the end of its table
    for steps in (2, 10) if zero_snr else (2, 10, 30):
        ts, sigmas = karras_timesteps(schedule, steps)
        theirs, their_ts = reference(config, steps, x, fake_denoiser, sde, karras=True, table=schedule.alphas_cumprod)
        assert ts == their_ts and sigmas == pytest.approx(reference.sigmas, rel=1e-6)
        assert sigmas[0] == pytest.approx(4096 if zero_snr else max(sigmas), rel=1e-5)  # starts at the top
        ours = sample_dpmpp_2m(fake_denoiser, x, schedule, ts, sigmas=sigmas, sde=sde, generator=generators(5, 6))
        assert rel_err(ours, theirs) <= 1e-5, steps


def exact_sample(denoiser: GaussianDenoiser, x_T: torch.Tensor, t: int) -> torch.Tensor:
    """The probability-flow ODE's x_0 from x_T at timestep t (Gaussian data: z = (x_t − √ᾱ μ)/√(ᾱ s² + 1 − ᾱ))."""
    a = denoiser.schedule.alpha_bar(t)
    return denoiser.mu + denoiser.std * (x_T - math.sqrt(a) * denoiser.mu) / math.sqrt(a * denoiser.std**2 + 1 - a)


def error_at(sample, denoiser, x_T, timesteps, t):
    """max |x_t − exact x_t| at an interior timestep t that the sampler visits."""
    truth = denoiser.flow_map(exact_sample(denoiser, x_T, timesteps[0]), t)
    seen = {}
    sample(denoiser, x_T, denoiser.schedule, timesteps, callback=lambda info: seen.setdefault(info["t"], info["x"]))
    return (seen[t] - truth).abs().max().item()


def test_second_order_convergence_on_the_exact_ode():
    """On Gaussian data the ODE has a closed form. At t = 200 (visited at 10, 20 and 40 steps) DPM++ 2M's error
    falls ~4× per doubling of the steps (second order), DDIM's ~2× (first order), and at 10 steps DPM++ 2M is
    several times closer. (The final jump to σ = 0 returns x̂_0 in both, so it is left out.)"""
    schedule = Schedule.make("scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon")
    denoiser = GaussianDenoiser(schedule)
    x = latents(shape=(1, 4, 16, 16)).double()
    ours = [error_at(sample_dpmpp_2m, denoiser, x, dpm_timesteps(n, 1000, "linspace"), 200) for n in (10, 20, 40)]
    ddim = [error_at(sample_ddim, denoiser, x, schedule.timesteps(n), 200) for n in (10, 20, 40)]
    dpm_rates = [ours[i] / ours[i + 1] for i in range(2)]
    ddim_rates = [ddim[i] / ddim[i + 1] for i in range(2)]
    assert all(3.3 < r < 4.7 for r in dpm_rates), (ours, dpm_rates)
    assert all(1.6 < r < 2.4 for r in ddim_rates), (ddim, ddim_rates)
    assert ours[0] < ddim[0] / 3


def test_sde_samples_the_data_distribution():
    """The SDE variant's samples of Gaussian data (65 536 values) approach the data's mean and std as steps grow:
    the last step returns the posterior mean x̂_0, which shrinks the spread at few steps."""
    schedule = Schedule.make("scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing",
                             prediction_type="v_prediction", rescale_betas_zero_snr=True)
    denoiser = GaussianDenoiser(schedule, mu=0.3, std=0.5)
    x = latents(shape=(4, 4, 64, 64))
    out = {n: sample_dpmpp_2m(denoiser, x, schedule, dpm_timesteps(n, 1000, "trailing"), sde=True,
                              generator=torch.Generator().manual_seed(3)) for n in (25, 50, 200)}
    std_error = [abs(out[n].std().item() - 0.5) for n in (25, 50, 200)]
    assert std_error[0] > std_error[1] > std_error[2] and std_error[2] < 0.005, std_error
    assert all(abs(o.mean().item() - 0.3) < 0.01 for o in out.values())
    again = sample_dpmpp_2m(denoiser, x, schedule, dpm_timesteps(25, 1000, "trailing"), sde=True,
                            generator=torch.Generator().manual_seed(4))
    assert (out[25] - again).abs().mean() > 0.1  # another seed, another sample


def test_bad_steps_are_refused():
    with pytest.raises(ValueError, match="steps=0"):
        dpm_timesteps(0, 1000)
    with pytest.raises(ValueError, match="timestep_spacing='even'"):
        dpm_timesteps(10, 1000, "even")
    schedule = Schedule.make("scaled_linear")
    with pytest.raises(ValueError, match="steps=0"):
        karras_timesteps(schedule, 0)
    with pytest.raises(ValueError, match="2 noise levels for 3 timesteps"):
        sample_dpmpp_2m(fake_denoiser, latents(), schedule, [999, 500, 0], sigmas=[10.0, 1.0])
