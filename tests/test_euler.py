"""Euler and Euler ancestral against diffusers' EulerDiscreteScheduler / EulerAncestralDiscreteScheduler."""

import math

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from fakes import fake_denoiser, rel_err

from latentdiff.core.analytic import GaussianDenoiser
from latentdiff.core.euler import euler_timesteps, initial_noise_scale, sample_euler
from latentdiff.core.schedule import Schedule

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)


def generators():
    return [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]


def theirs(config, steps, x, ancestral):
    """diffusers' loop as its pipelines run it: scale the noise, scale each model input, step."""
    ref = (EulerAncestralDiscreteScheduler if ancestral else EulerDiscreteScheduler)(**config)
    ref.set_timesteps(steps)
    gens, y = generators(), x * ref.init_noise_sigma
    for t in ref.timesteps:
        y = ref.step(fake_denoiser(ref.scale_model_input(y, t), float(t)), t, y, generator=gens).prev_sample
    return y, [float(t) for t in ref.timesteps]


def ours(config, steps, x, ancestral):
    schedule = Schedule.from_config(config)
    ts, sigmas = euler_timesteps(schedule, steps)
    return sample_euler(fake_denoiser, x, schedule, ts, sigmas, ancestral=ancestral, generator=generators(),
                        noise_scale=initial_noise_scale(schedule.timestep_spacing, sigmas)), ts


@pytest.mark.parametrize("ancestral", [False, True])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_matches_diffusers(spacing, prediction, ancestral):
    """Same timesteps (fractional for linspace), same initial noise scale, same draws, same result."""
    config = dict(SD, prediction_type=prediction, timestep_spacing=spacing)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for steps in (7, 25, 50):
        ref, ref_ts = theirs(config, steps, x, ancestral)
        out, ts = ours(config, steps, x, ancestral)
        assert ts == ref_ts
        assert rel_err(out, ref) <= 1e-5, steps


@pytest.mark.parametrize("ancestral", [False, True])
@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_zero_terminal_snr_is_exact_where_diffusers_loses_digits(spacing, ancestral):
    """At zero terminal SNR the first level is k = 4096 (ᾱ lifted to 2⁻²⁴ by both). diffusers' float32 step
    y + (y − x̂_0)(k' − k)/k cancels y ≈ 4096 x against itself; ours, y·k'/k + x̂_0(1 − k'/k), does not. So ours in
    float32 equals ours in float64, and diffusers is within its float32 cancellation of both."""
    config = dict(SD, prediction_type="v_prediction", timestep_spacing=spacing, rescale_betas_zero_snr=True)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for steps in (1, 7, 25):
        ref, _ = theirs(config, steps, x, ancestral)
        out, _ = ours(config, steps, x, ancestral)
        if not ancestral:  # (in float64 the ancestral noise draws would be other numbers)
            truth, _ = ours(config, steps, x.double(), ancestral)
            assert rel_err(out.double(), truth) <= 1e-6
        assert rel_err(ref, out) <= 1e-3


def test_euler_converges_to_the_exact_ode_at_first_order():
    """Gaussian data: the ODE's x_0 has a closed form. Euler's error at 25 → 50 → 100 steps halves each time."""
    schedule = Schedule.make("scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading",
                             steps_offset=1)
    denoiser = GaussianDenoiser(schedule)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (25, 50, 100):
        ts, sigmas = euler_timesteps(schedule, steps)
        # the exact start: x ~ N(0, I) scaled by √(k²+1)·α = 1 at the first level; the ODE carries it to x_0
        a = schedule.alpha_bar(int(ts[0]))
        truth = denoiser.mu + denoiser.std * (x - math.sqrt(a) * denoiser.mu) / math.sqrt(a * denoiser.std**2 + 1 - a)
        out = sample_euler(lambda y, t: denoiser(y, int(t)), x, schedule, ts, sigmas)
        errors.append((out - truth).abs().max().item())
    rates = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(1.6 < r < 2.4 for r in rates), (errors, rates)


def test_ancestral_samples_approach_the_data_distribution():
    """Gaussian data (65 536 values): the mean is right at any step count, the spread approaches the data's as
    steps grow (the last step returns the posterior mean x̂_0, which shrinks it at few steps)."""
    schedule = Schedule.make("scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing",
                             prediction_type="v_prediction", rescale_betas_zero_snr=True)
    denoiser = GaussianDenoiser(schedule, mu=0.3, std=0.5)
    x = torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    std_error = []
    for steps in (50, 200, 800):
        ts, sigmas = euler_timesteps(schedule, steps)
        out = sample_euler(lambda y, t: denoiser(y, int(t)), x, schedule, ts, sigmas, ancestral=True,
                           generator=torch.Generator().manual_seed(3))
        assert abs(out.mean().item() - 0.3) < 0.01
        std_error.append(abs(out.std().item() - 0.5))
    assert std_error[0] > std_error[1] > std_error[2] and std_error[2] < 0.01, std_error


def test_bad_input_is_refused():
    schedule = Schedule.make("scaled_linear")
    with pytest.raises(ValueError, match="steps=0"):
        euler_timesteps(schedule, 0)
    with pytest.raises(ValueError, match="2 noise levels for 3 timesteps"):
        sample_euler(fake_denoiser, torch.zeros(1, 4, 8, 8), schedule, [999.0, 500.0, 0.0], [10.0, 1.0])
