"""Classifier-free guidance wrapper: call counts, batch layout, and the formulas."""

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from latentdiff.core.guidance import CFGDenoiser, rescale_guidance
from latentdiff.core.sampling import sample_ddim
from latentdiff.core.schedule import Schedule


class RecordingModel:
    """model(x, t, cond): output depends on the conditioning so that guidance is visible."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append((x.shape[0], cond.clone()))
        return 0.5 * x + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def conds(batch=2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 5, 8, generator=g), torch.randn(batch, 5, 8, generator=g)


def test_scale_one_calls_model_once_per_step_without_uncond():
    model, (cond, uncond) = RecordingModel(), conds()
    schedule = Schedule.make("scaled_linear")
    sample_ddim(CFGDenoiser(model, cond, uncond, scale=1.0), torch.randn(2, 4, 8, 8), schedule, schedule.timesteps(6))
    assert len(model.calls) == 6
    assert all(b == 2 and torch.equal(c, cond) for b, c in model.calls)


def test_guided_calls_model_once_per_step_on_uncond_then_cond():
    model, (cond, uncond) = RecordingModel(), conds()
    schedule = Schedule.make("scaled_linear")
    sample_ddim(CFGDenoiser(model, cond, uncond, scale=7.5), torch.randn(2, 4, 8, 8), schedule, schedule.timesteps(6))
    assert len(model.calls) == 6
    assert all(b == 4 and torch.equal(c, torch.cat([uncond, cond])) for b, c in model.calls)


def test_guidance_formula_and_rescale_match_diffusers():
    model, (cond, uncond) = RecordingModel(), conds()
    x = torch.randn(2, 4, 8, 8)
    out_u, out_c = model(x, 10, uncond), model(x, 10, cond)
    torch.testing.assert_close(CFGDenoiser(model, cond, uncond, scale=7.5)(x, 10), out_u + 7.5 * (out_c - out_u))
    guided = out_u + 7.5 * (out_c - out_u)
    torch.testing.assert_close(rescale_guidance(guided, out_c, 0.7), rescale_noise_cfg(guided, out_c, 0.7))
    torch.testing.assert_close(CFGDenoiser(model, cond, uncond, scale=7.5, rescale=0.7)(x, 10),
                               rescale_noise_cfg(guided, out_c, 0.7))
    # scale 0 is the unconditional model
    torch.testing.assert_close(CFGDenoiser(model, cond, uncond, scale=0.0)(x, 10), out_u)
