"""Image to image in the core: a strength plan is the tail of the schedule that diffusers' img2img pipelines run, the
start is each scheduler's ``add_noise``, and the after-step hook re-imposes known latents exactly as diffusers'
inpainting does; for every registered sampler, on the exact Gaussian denoiser."""

import inspect

import diffusers
import pytest
import torch

from latentdiff.core.analytic import GaussianDenoiser
from latentdiff.core.samplers import SAMPLERS, check_strength, plan
from latentdiff.core.schedule import Schedule

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False,
          set_alpha_to_one=False, timestep_spacing="leading")
ZERO_SNR = dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
STEPS = 20


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def diffusers_run(name, config, strength, x0, noise, denoiser, mask=None, seed=1):
    """diffusers' img2img / inpainting loop: get_timesteps, add_noise at the first kept timestep, the steps, and with
    a mask the known latents re-noised to the next timestep after each step (clean after the last)."""
    sampler = SAMPLERS[name]
    cls = getattr(diffusers, sampler.diffusers)
    accepted = inspect.signature(cls.__init__).parameters
    ref = cls(**{k: v for k, v in {**config, **sampler.diffusers_config}.items() if k in accepted})
    ref.set_timesteps(STEPS)
    start = STEPS - min(int(STEPS * strength), STEPS)
    timesteps = ref.timesteps[start * ref.order:]
    if hasattr(ref, "set_begin_index"):
        ref.set_begin_index(start * ref.order)
    x = ref.add_noise(x0, noise, timesteps[:1])
    generator = torch.Generator().manual_seed(seed)
    for i, t in enumerate(timesteps):
        x = ref.step(denoiser(ref.scale_model_input(x, t), float(t) if t % 1 else int(t)), t, x,
                     generator=generator).prev_sample
        if mask is not None:
            known = ref.add_noise(x0, noise, timesteps[i + 1:i + 2]) if i < len(timesteps) - 1 else x0
            x = (1 - mask) * known + mask * x
    return [float(t) if t % 1 else int(t) for t in timesteps], x


@pytest.mark.parametrize("config", [SD, ZERO_SNR], ids=["sd", "zero-snr"])
@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_strength_runs_the_tail_diffusers_runs(name, strength, config):
    if name.endswith("karras") and config is ZERO_SNR:
        pytest.skip("Karras levels are not for zero-terminal-SNR schedules (README)")
    schedule = Schedule.from_config(config)
    denoiser = GaussianDenoiser(schedule)
    x0 = denoiser.mu + denoiser.std * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    mask = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    p = plan(name, schedule, STEPS, strength=strength)
    for blend in (None, mask):
        timesteps, theirs = diffusers_run(name, config, strength, x0, noise, denoiser, blend)
        assert p.timesteps == timesteps
        assert torch.isfinite(theirs).all()

        def after_step(i, x, blend=blend):
            known = p.noised(x0, noise, i + 1) if i + 1 < len(p.timesteps) else x0
            return (1 - blend) * known + blend * x

        ours = p(denoiser, p.noised(x0, noise), schedule, generator=torch.Generator().manual_seed(1),
                 after_step=None if blend is None else after_step)
        assert rel_err(ours, theirs) <= 1e-5, (name, strength, blend is not None)


def test_the_hook_sees_every_step_and_its_result_continues_the_run():
    schedule = Schedule.from_config(SD)
    denoiser = GaussianDenoiser(schedule)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in SAMPLERS:
        p = plan(name, schedule, 6)
        seen = []
        ours = p(denoiser, x, schedule, generator=torch.Generator().manual_seed(1),
                 after_step=lambda i, latents: seen.append(i) or torch.zeros_like(latents))
        assert seen == list(range(6)) and torch.equal(ours, torch.zeros_like(ours)), name


def test_strength_is_checked_with_one_line():
    assert check_strength(1.0, 30) == 30 and check_strength(0.5, 30) == 15 and check_strength(0.34, 3) == 1
    for strength in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"strength=.* must be in \(0, 1\]"):
            plan("ddim", Schedule.from_config(SD), 30, strength=strength)
    with pytest.raises(ValueError, match=r"strength=0.01 of steps=30 runs no step"):
        plan("ddim", Schedule.from_config(SD), 30, strength=0.01)
