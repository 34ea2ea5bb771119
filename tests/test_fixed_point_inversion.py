"""Fixed-point DDIM inversion: each refined inversion step is undone exactly by the sampling step, on plain and
zero-terminal-SNR models; clipped schedules refuse it; each refined step starts from the previous output."""

import pytest
import torch

from latentdiff.core.sampling import ddim_invert
from latentdiff.edit.inversion import FIXED_POINT_ITERS, invert, reconstruct
from latentdiff.models import load_components
from latentdiff.pipelines.prompts import encode_prompts

PROMPT = "a red square and a yellow circle"
STEPS, GUIDANCE = 10, 7.5


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def z0():
    return torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))  # unit variance, like SD latents


def _step_errors(c, cond, z0, iters):
    """Relative error of each sampling step from the pivot's z*_t back onto its z*_{t−1}."""
    from latentdiff.core.sampling import ddim_step

    schedule, trajectory, used = c.schedule, [z0], []
    timesteps = schedule.timesteps(STEPS)
    denoiser = lambda x, t: c.unet(x, t, encoder_hidden_states=cond).sample  # noqa: E731
    with torch.no_grad():
        ddim_invert(denoiser, z0, schedule, timesteps, fixed_point_iters=iters, fixed_point_tol=0.0,
                    callback=lambda d: (trajectory.append(d["x"]), used.append(d["fixed_point_iters"])))
        stride = schedule.num_train_timesteps // STEPS
        errors = []
        for k, t in enumerate(reversed(timesteps)):  # z*_{k+1} sits at timestep t
            back = ddim_step(trajectory[k + 1], denoiser(trajectory[k + 1], t), schedule.alpha_bar(t),
                             schedule.alpha_bar(t - stride), schedule.prediction_type)
            errors.append(rel_err(back, trajectory[k]))
    return errors, used


@pytest.mark.parametrize("kind, zero_snr", [(("epsilon", 8), False), (("v_prediction", 4), True)])
def test_fixed_point_pivot_is_undone_exactly_by_each_sampling_step(tiny_models, kind, zero_snr):
    c = load_components(tiny_models[kind], device="cpu")
    with torch.no_grad():  # well-conditioned, as a trained model (see the module docstring)
        c.unet.conv_out.weight.mul_(0.1)
        c.unet.conv_out.bias.mul_(0.1)
    if zero_snr:
        c.scheduler_config = dict(c.scheduler_config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    z0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    cond = encode_prompts(c, [PROMPT])
    plain, used_plain = _step_errors(c, cond, z0, 0)
    refined, used = _step_errors(c, cond, z0, 12)
    assert used_plain == [0] * STEPS and used == [12] * STEPS  # tol 0: every iteration runs
    assert max(refined) < 1e-5 and max(plain) > 100 * max(refined), (plain, refined)


def test_npi_on_a_refined_pivot_gives_the_image_back_on_a_zero_snr_model(tiny_models):
    c = load_components(tiny_models[("v_prediction", 4)], device="cpu")
    with torch.no_grad():
        c.unet.conv_out.weight.mul_(0.1)
        c.unet.conv_out.bias.mul_(0.1)
    c.scheduler_config = dict(c.scheduler_config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    z0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    errors = {}
    for iters in (0, None):  # None: the default, FIXED_POINT_ITERS with early stop
        inv = invert(c, z0, PROMPT, method="npi", steps=STEPS, guidance=GUIDANCE, fixed_point_iters=iters)
        errors[iters] = rel_err(reconstruct(c, inv), z0)
        assert inv.fixed_point_iters == (0 if iters == 0 else FIXED_POINT_ITERS)
        assert 0 <= inv.stats["fixed_point_iterations"] <= STEPS * inv.fixed_point_iters
    assert errors[None] < 1e-3 and errors[0] > 10 * errors[None], errors


def test_clipped_schedules_invert_plainly_by_default_and_refuse_fixed_point(tiny_models, z0):
    c = load_components(tiny_models[("epsilon", 8)], device="cpu")
    c.scheduler_config = dict(c.scheduler_config, clip_sample=True)
    inv = invert(c, z0, PROMPT, method="npi", steps=STEPS, guidance=GUIDANCE)
    assert inv.fixed_point_iters == 0
    with pytest.raises(ValueError, match="clip_sample=True; use 0 fixed-point iterations"):
        invert(c, z0, PROMPT, method="npi", steps=STEPS, guidance=GUIDANCE, fixed_point_iters=2)


def test_refined_inversion_starts_each_step_from_the_previous_output(tiny_models):
    """One model evaluation per fixed-point iteration, plus one for the first step (warm start); plain: one per step."""
    c = load_components(tiny_models[("epsilon", 8)], device="cpu")
    cond = encode_prompts(c, [PROMPT])
    calls = []

    def denoiser(x, t):
        calls.append(t)
        return 0.1 * c.unet(x, t, encoder_hidden_states=cond).sample

    z0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    timesteps = c.schedule.timesteps(STEPS)
    for iters in (0, 2):
        calls.clear()
        used = []
        with torch.no_grad():
            ddim_invert(denoiser, z0, c.schedule, timesteps, fixed_point_iters=iters,
                        callback=lambda d: used.append(d["fixed_point_iters"]))
        assert len(calls) == (STEPS if iters == 0 else 1 + sum(used)), (iters, used)
        assert iters == 0 or min(used) >= 1
