"""Closed-form identities of the schedule, the conversions and DDIM inversion."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from latentdiff.core.analytic import GaussianDenoiser
from latentdiff.core.sampling import ddim_invert, sample_ddim
from latentdiff.core.schedule import PREDICTION_TYPES, Schedule, convert, inference_timesteps


def data(seed=0, shape=(3, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_target_of_noised_sample_recovers_x0_and_eps(beta_schedule, prediction):
    schedule = Schedule.make(beta_schedule, prediction_type=prediction)
    x0, eps = data()
    for t in [0, 1, 250, 500, 998]:
        tt = torch.full((x0.shape[0],), t)
        x_t = schedule.add_noise(x0, eps, tt)
        x0_hat, eps_hat = schedule.predict_x0_eps(schedule.target(x0, eps, tt), x_t, t)
        torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
        torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)


def test_add_noise_and_velocity_match_closed_form_and_diffusers():
    schedule = Schedule.make("scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0, eps = data()
    t = torch.tensor([0, 499, 999])
    a = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(schedule.add_noise(x0, eps, t), a.sqrt() * x0 + (1 - a).sqrt() * eps)
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0f, epsf = x0.float(), eps.float()
    torch.testing.assert_close(schedule.add_noise(x0f, epsf, t), ref.add_noise(x0f, epsf, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(schedule.velocity(x0f, epsf, t), ref.get_velocity(x0f, epsf, t), rtol=1e-5, atol=1e-5)
    assert schedule.add_noise(x0f, epsf, t).dtype == torch.float32


@pytest.mark.parametrize("alpha_bar", [0.999, 0.5, 0.01])
def test_conversions_round_trip(alpha_bar):
    x_t, out = data()
    for source in PREDICTION_TYPES:
        for dest in PREDICTION_TYPES:
            there = convert(out, x_t, alpha_bar, source, dest)
            torch.testing.assert_close(convert(there, x_t, alpha_bar, dest, source), out, rtol=0, atol=1e-10)
    # the three parameterizations are consistent with x_t = √ᾱ x0 + √(1−ᾱ) ε and v = √ᾱ ε − √(1−ᾱ) x0
    x0, eps, v = (convert(out, x_t, alpha_bar, "epsilon", d) for d in ("sample", "epsilon", "v_prediction"))
    torch.testing.assert_close(math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps, x_t)
    torch.testing.assert_close(v, math.sqrt(alpha_bar) * eps - math.sqrt(1 - alpha_bar) * x0)


def test_stable_diffusion_timesteps():
    """The well-known SD 1.x DDIM timesteps: 981, 961, …, 1 for 50 steps (leading, steps_offset=1)."""
    assert inference_timesteps(50, 1000, "leading", 1) == list(range(981, 0, -20))
    assert inference_timesteps(4, 1000, "trailing") == [999, 749, 499, 249]
    assert inference_timesteps(3, 1000, "linspace") == [999, 500, 0]
    assert inference_timesteps(1000, 1000, "leading") == list(range(999, -1, -1))


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_ddim_inversion_round_trip_error_shrinks_with_steps(prediction):
    """Invert x0 to x_T and sample back (η = 0, no guidance) with an exact denoiser: error → 0 as N grows."""
    schedule = Schedule.make("scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction,
                             set_alpha_to_one=False, steps_offset=1)
    denoiser = GaussianDenoiser(schedule)
    mu, std = denoiser.mu, denoiser.std
    x0 = mu + std * data()[0]
    errors, flow_errors = [], []
    for steps in [10, 50, 250]:
        ts = schedule.timesteps(steps)
        x_T = ddim_invert(denoiser, x0, schedule, ts)
        # the exact flow map of Gaussian data: x_T = √ᾱ mu + √(ᾱ std² + 1 − ᾱ) (x0 − mu) / std at t = ts[0]
        flow_errors.append((x_T - denoiser.flow_map(x0, ts[0])).abs().max().item())
        errors.append((sample_ddim(denoiser, x_T, schedule, ts) - x0).abs().max().item())
    # DDIM is a first-order solver: 5x the steps cuts the round-trip error by at least 3x
    assert errors[0] > 3 * errors[1] > 9 * errors[2], errors
    assert flow_errors[0] > 2 * flow_errors[1] > 8 * flow_errors[2], flow_errors
