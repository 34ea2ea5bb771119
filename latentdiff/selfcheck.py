"""`latentdiff selfcheck`: our samplers against diffusers' schedulers on an exact Gaussian denoiser."""

from __future__ import annotations

import inspect

import torch

from .analytic import GaussianDenoiser
from .dpm_solver import dpm_timesteps, sample_dpmpp_2m
from .euler import euler_timesteps, initial_noise_scale, sample_euler
from .sampling import ddim_invert, sample_ddim, sample_ddpm
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
    """Rows of (check, measured value, bound); a check passes when value <= bound."""
    from diffusers import (DDIMInverseScheduler, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                           EulerAncestralDiscreteScheduler, EulerDiscreteScheduler)

    rows = []
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(seed))
    for prediction in ("epsilon", "v_prediction"):
        config = dict(SD_CONFIG, prediction_type=prediction)
        schedule = Schedule.from_config(config)
        denoiser, ts = GaussianDenoiser(schedule), schedule.timesteps(steps)

        def rel(a, b):
            return ((a - b).abs().max() / b.abs().max()).item()

        for eta in (0.0, 1.0):
            ours = sample_ddim(denoiser, x, schedule, ts, eta=eta, generator=torch.Generator().manual_seed(1))
            ref = _reference(DDIMScheduler, config, steps, denoiser, x, seed=1, eta=eta)
            rows.append((f"DDIM eta={eta:g} vs diffusers ({prediction})", rel(ours, ref), 1e-5))
        ours = sample_ddpm(denoiser, x, schedule, ts, generator=torch.Generator().manual_seed(1))
        ref = _reference(DDPMScheduler, config, steps, denoiser, x, seed=1)
        rows.append((f"DDPM vs diffusers ({prediction})", rel(ours, ref), 1e-5))
        for sde in (False, True):
            name = "sde-dpmsolver++" if sde else "dpmsolver++"
            ours = sample_dpmpp_2m(denoiser, x, schedule, dpm_timesteps(steps, 1000, "leading", 1), sde=sde,
                                   generator=torch.Generator().manual_seed(1))
            ref = _reference(DPMSolverMultistepScheduler, dict(config, algorithm_type=name), steps, denoiser, x, seed=1)
            rows.append((f"DPM-Solver++ 2M{' SDE' if sde else ''} vs diffusers ({prediction})", rel(ours, ref), 1e-5))
        for cls, ancestral in ((EulerDiscreteScheduler, False), (EulerAncestralDiscreteScheduler, True)):
            euler_ts, sigmas = euler_timesteps(schedule, steps)
            ours = sample_euler(denoiser, x, schedule, euler_ts, sigmas, ancestral=ancestral,
                                noise_scale=initial_noise_scale(schedule.timestep_spacing, sigmas),
                                generator=torch.Generator().manual_seed(1))
            ref = _reference(cls, config, steps, denoiser, x, seed=1)
            rows.append((f"Euler{' ancestral' if ancestral else ''} vs diffusers ({prediction})", rel(ours, ref), 1e-5))
        x0 = denoiser.mu + denoiser.std * x
        ours = ddim_invert(denoiser, x0, schedule, ts)
        ref = _reference(DDIMInverseScheduler, config, steps, denoiser, x0)
        rows.append((f"DDIM inversion vs diffusers ({prediction})", rel(ours, ref), 1e-5))
        back = sample_ddim(denoiser, ours, schedule, ts)
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
