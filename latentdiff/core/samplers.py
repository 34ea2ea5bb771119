"""The sampler registry: one table from a sampler's name to its function and its timestep plan.

Every plan has one signature, ``plan(schedule, steps, eta) -> (timesteps, keyword arguments)``, and validates what
it is given (steps against the schedule; η where the sampler takes it), so that a command validates its sampler
settings once, by planning once. The pipeline, the CLI's ``--sampler`` help and choices, ``eval``, ``eval-edit``
and ``selfcheck`` read this table; adding a sampler is adding a row.

Image to image (``strength`` s): of the N planned steps the last ⌊N·s⌋ run (diffusers' ``get_timesteps``), from
the image's latents noised to the first of them (:meth:`Plan.noised`, each scheduler's ``add_noise``).

Each row names the diffusers scheduler (and config entries) it equals: same timesteps, same initial noise scale,
same random draws, so that one seed gives one image in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .dpm_solver import dpm_timesteps, karras_timesteps, sample_dpmpp_2m
from .euler import euler_timesteps, initial_noise_scale, sample_euler
from .sampling import Callback, Denoiser, Generators, StepHook, check_eta, sample_ddim, sample_ddpm
from .schedule import Schedule, noise_levels

PlanFunction = Callable[[Schedule, int, float], tuple[list, dict]]


@dataclass(frozen=True)
class Sampler:
    """One row of the registry."""

    name: str
    function: Callable  # function(denoiser, x, schedule, timesteps, *, generator, callback, disable_progress, **kwargs)
    plan: PlanFunction  # (schedule, steps, eta) -> (timesteps, keyword arguments of ``function``)
    label: str  # the human name: "DDIM", "DPM-Solver++ 2M SDE Karras", ...
    diffusers: str  # the diffusers scheduler class this sampler equals
    diffusers_config: dict = field(default_factory=dict)  # with these scheduler-config entries
    takes_eta: bool = False  # η is DDIM's; the other samplers have their own noise
    sigma_based: bool = False  # steps between σ/α levels k (DPM-Solver, Euler), zero terminal SNR lifted to finite k


@dataclass(frozen=True)
class Plan:
    """A sampler with its timesteps and arguments for one run: ``plan(denoiser, x, schedule, ...) -> x_0``.

    ``alpha_bars[i]`` is the noise level ᾱ of the latents step i starts from (x = √ᾱ x_0 + √(1−ᾱ) ε), as the
    sampler's diffusers scheduler puts it (``add_noise``): ᾱ_t for DDIM/DDPM, 1/(1 + k²) at the σ/α level k of
    DPM-Solver and Euler (zero terminal SNR lifted to a finite k, as they do)."""

    sampler: Sampler
    timesteps: list
    kwargs: dict
    alpha_bars: list

    def __call__(self, denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, *, generator: Generators = None,
                 callback: Optional[Callback] = None, after_step: Optional[StepHook] = None,
                 disable_progress: bool = True) -> torch.Tensor:
        return self.sampler.function(denoiser, x, schedule, self.timesteps, generator=generator, callback=callback,
                                     after_step=after_step, disable_progress=disable_progress, **self.kwargs)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, i: int = 0) -> torch.Tensor:
        """x_0 noised to the level step i starts from: √ᾱ_i x_0 + √(1−ᾱ_i) ε (Ho et al. 2020, eq. 4)."""
        a = self.alpha_bars[i]
        return torch.add(x0 * math.sqrt(a), noise, alpha=math.sqrt(1 - a))


def _ddim(schedule: Schedule, steps: int, eta: float) -> tuple[list, dict]:
    check_eta(eta)
    return schedule.timesteps(steps), {"eta": eta, "stride": schedule.num_train_timesteps // steps}


def _ddpm(schedule: Schedule, steps: int, eta: float) -> tuple[list, dict]:
    return schedule.timesteps(steps), {}


def _dpm(sde: bool, karras: bool) -> PlanFunction:
    def plan(schedule: Schedule, steps: int, eta: float) -> tuple[list, dict]:
        if karras:
            timesteps, sigmas = karras_timesteps(schedule, steps)
            return timesteps, {"sde": sde, "sigmas": sigmas}
        return dpm_timesteps(steps, schedule.num_train_timesteps, schedule.timestep_spacing,
                             schedule.steps_offset), {"sde": sde}

    return plan


def _euler(ancestral: bool) -> PlanFunction:
    def plan(schedule: Schedule, steps: int, eta: float) -> tuple[list, dict]:
        timesteps, sigmas = euler_timesteps(schedule, steps)
        return timesteps, {"sigmas": sigmas, "ancestral": ancestral,
                           "noise_scale": initial_noise_scale(schedule.timestep_spacing, sigmas)}

    return plan


def _dpm_row(name: str, sde: bool, karras: bool) -> Sampler:
    config = {"algorithm_type": "sde-dpmsolver++" if sde else "dpmsolver++", **({"use_karras_sigmas": True}
                                                                                 if karras else {})}
    label = "DPM-Solver++ 2M" + " SDE" * sde + " Karras" * karras
    return Sampler(name, sample_dpmpp_2m, _dpm(sde, karras), label, "DPMSolverMultistepScheduler", config,
                   sigma_based=True)


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddim", sample_ddim, _ddim, "DDIM", "DDIMScheduler", takes_eta=True),  # Song et al. 2021
    Sampler("ddpm", sample_ddpm, _ddpm, "DDPM", "DDPMScheduler"),  # Ho et al. 2020
    _dpm_row("dpmpp-2m", sde=False, karras=False),  # Lu et al. 2022
    _dpm_row("dpmpp-2m-sde", sde=True, karras=False),
    _dpm_row("dpmpp-2m-karras", sde=False, karras=True),  # Karras et al. 2022's noise levels
    _dpm_row("dpmpp-2m-sde-karras", sde=True, karras=True),
    Sampler("euler", sample_euler, _euler(False), "Euler", "EulerDiscreteScheduler",  # Karras et al. 2022, Alg. 1
            sigma_based=True),
    Sampler("euler-a", sample_euler, _euler(True), "Euler ancestral", "EulerAncestralDiscreteScheduler",
            sigma_based=True),
)}


def get_sampler(name: str) -> Sampler:
    """The registry's row for ``name``; a ValueError naming the choices when there is none."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not supported; choose one of {', '.join(map(repr, SAMPLERS))}")
    return SAMPLERS[name]


def _alpha_bars(sampler: Sampler, schedule: Schedule, timesteps: list, kwargs: dict) -> list[float]:
    """ᾱ of each step's start: the schedule's ᾱ_t, or 1/(1 + k²) at the level k a σ-based sampler steps from."""
    if not sampler.sigma_based:
        return [schedule.alpha_bar(t) for t in timesteps]
    levels = kwargs.get("sigmas") or [float(noise_levels(schedule.alphas_cumprod)[t]) for t in timesteps]
    return [1 / (1 + k * k) for k in levels]


def check_strength(strength: float, steps: int) -> int:
    """The number of steps an image-to-image run of ``steps`` steps at ``strength`` takes, ⌊steps·strength⌋;
    a ValueError naming the setting when strength is outside (0, 1] or leaves no step."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength={strength!r} must be in (0, 1]: the fraction of the steps that repaint the image")
    taken = min(int(steps * strength), steps)
    if taken < 1:
        raise ValueError(f"strength={strength:g} of steps={steps} runs no step (⌊steps·strength⌋ = 0); raise the "
                         f"strength to at least {1 / steps:.3g} or the steps")
    return taken


def plan(name: str, schedule: Schedule, steps: int, eta: float = 0.0, strength: Optional[float] = None) -> Plan:
    """Validate the sampler settings and plan one run: the sampler of ``name`` with its timesteps and arguments.

    ``eta`` is used by the samplers that take it (``ddim``) and ignored by the others. ``strength`` plans an
    image-to-image run: the last ⌊steps·strength⌋ of the steps, started from :meth:`Plan.noised` (no initial
    noise scaling: the start is at the first level exactly)."""
    sampler = get_sampler(name)
    timesteps, kwargs = sampler.plan(schedule, steps, eta)
    alpha_bars = _alpha_bars(sampler, schedule, timesteps, kwargs)
    if strength is not None:
        start = steps - check_strength(strength, steps)
        kwargs = {k: (v[start:] if isinstance(v, list) and len(v) == len(timesteps) else v) for k, v in kwargs.items()}
        if "noise_scale" in kwargs:
            kwargs["noise_scale"] = 1.0
        timesteps, alpha_bars = timesteps[start:], alpha_bars[start:]
    return Plan(sampler, timesteps, kwargs, alpha_bars)
