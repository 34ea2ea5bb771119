"""`latentdiff selfcheck`: every registered sampler against its diffusers scheduler on an exact Gaussian denoiser."""

from __future__ import annotations

import inspect

import torch

from .analytic import GaussianDenoiser
from .samplers import SAMPLERS, plan
from .sampling import ddim_invert, sample_ddim
from .schedule import Schedule

# Stable Diffusion 1.x's scheduler config
SD_CONFIG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                 clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading")


def _reference(cls, config, steps, denoiser, x, seed=None, **step_kwargs):
    """diffusers' loop as its pipelines run it: initial noise scaled by ``init_noise_sigma`` and each model input
    by ``scale_model_input`` (both the identity for DDIM, DDPM and DPM-Solver; not for Euler)."""
    accepted = inspect.signature(cls.__init__).parameters
    ref = cls(**{k: v for k, v in config.items() if k in accepted})
    ref.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    x = x * ref.init_noise_sigma
    for t in ref.timesteps:
        kwargs = dict(step_kwargs, generator=generator) if seed is not None else step_kwargs
        x = ref.step(denoiser(ref.scale_model_input(x, t), int(t)), t, x, **kwargs).prev_sample
    return x


def run(steps: int = 50, seed: int = 0) -> list[tuple[str, float, float]]:
    """Rows of (check, measured value, bound); a check passes when value <= bound. Every sampler of the registry
    is compared with the diffusers scheduler its row names (with η 0 and 1 where it takes η)."""
    import diffusers

    rows = []
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(seed))
    for prediction in ("epsilon", "v_prediction"):
        config = dict(SD_CONFIG, prediction_type=prediction)
        schedule = Schedule.from_config(config)
        denoiser = GaussianDenoiser(schedule)

        def rel(a, b):
            return ((a - b).abs().max() / b.abs().max()).item()

        for sampler in SAMPLERS.values():
            for eta in (0.0, 1.0) if sampler.takes_eta else (None,):
                ours = plan(sampler.name, schedule, steps, eta=eta or 0.0)(
                    denoiser, x, schedule, generator=torch.Generator().manual_seed(1))
                step_kwargs = {"eta": eta} if sampler.takes_eta else {}
                ref = _reference(getattr(diffusers, sampler.diffusers), dict(config, **sampler.diffusers_config),
                                 steps, denoiser, x, seed=1, **step_kwargs)
                label = f" eta={eta:g}" if sampler.takes_eta else ""
                rows.append((f"{sampler.label}{label} vs diffusers ({prediction})", rel(ours, ref), 1e-5))
        timesteps = plan("ddim", schedule, steps).timesteps
        x0 = denoiser.mu + denoiser.std * x
        ours = ddim_invert(denoiser, x0, schedule, timesteps)
        ref = _reference(diffusers.DDIMInverseScheduler, config, steps, denoiser, x0)
        rows.append((f"DDIM inversion vs diffusers ({prediction})", rel(ours, ref), 1e-5))
        back = sample_ddim(denoiser, ours, schedule, timesteps)
        rms = ((back - x0).pow(2).mean().sqrt() / denoiser.std).item()
        # DDIM is first order: at 50 steps the round trip is a few percent of the data std
        rows.append((f"invert+sample round trip RMS err / data std ({prediction})", rms, 0.1))
    return rows


def main(steps: int = 50) -> int:
    rows = run(steps)
    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}}  {'measured':>10}  {'bound':>8}  result")
    for name, value, bound in rows:
        print(f"{name:<{width}}  {value:10.2e}  {bound:8.0e}  {'ok' if value <= bound else 'FAIL'}")
    failed = sum(value > bound for _, value, bound in rows)
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0
