"""The sampler registry: one table from a sampler's name to its function and its timestep plan.

Every plan has one signature, ``plan(schedule, steps, eta) -> (timesteps, keyword arguments)``, and validates what
it is given (steps against the schedule; η where the sampler takes it), so that a command validates its sampler
settings once, by planning once. The pipeline, the CLI's ``--sampler`` help and choices, ``eval``, ``eval-edit``
and ``selfcheck`` read this table; adding a sampler is adding a row.

Each row names the diffusers scheduler (and config entries) it equals: same timesteps, same initial noise scale,
same random draws, so that one seed gives one image in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .dpm_solver import dpm_timesteps, karras_timesteps, sample_dpmpp_2m
from .euler import euler_timesteps, initial_noise_scale, sample_euler
from .sampling import Callback, Denoiser, Generators, check_eta, sample_ddim, sample_ddpm
from .schedule import Schedule

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


@dataclass(frozen=True)
class Plan:
    """A sampler with its timesteps and arguments for one run: ``plan(denoiser, x, schedule, ...) -> x_0``."""

    sampler: Sampler
    timesteps: list
    kwargs: dict

    def __call__(self, denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, *, generator: Generators = None,
                 callback: Optional[Callback] = None, disable_progress: bool = True) -> torch.Tensor:
        return self.sampler.function(denoiser, x, schedule, self.timesteps, generator=generator, callback=callback,
                                     disable_progress=disable_progress, **self.kwargs)


def _ddim(schedule: Schedule, steps: int, eta: float) -> tuple[list, dict]:
    check_eta(eta)
    return schedule.timesteps(steps), {"eta": eta}


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
    return Sampler(name, sample_dpmpp_2m, _dpm(sde, karras), label, "DPMSolverMultistepScheduler", config)


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddim", sample_ddim, _ddim, "DDIM", "DDIMScheduler", takes_eta=True),  # Song et al. 2021
    Sampler("ddpm", sample_ddpm, _ddpm, "DDPM", "DDPMScheduler"),  # Ho et al. 2020
    _dpm_row("dpmpp-2m", sde=False, karras=False),  # Lu et al. 2022
    _dpm_row("dpmpp-2m-sde", sde=True, karras=False),
    _dpm_row("dpmpp-2m-karras", sde=False, karras=True),  # Karras et al. 2022's noise levels
    _dpm_row("dpmpp-2m-sde-karras", sde=True, karras=True),
    Sampler("euler", sample_euler, _euler(False), "Euler", "EulerDiscreteScheduler"),  # Karras et al. 2022, Alg. 1
    Sampler("euler-a", sample_euler, _euler(True), "Euler ancestral", "EulerAncestralDiscreteScheduler"),
)}


def get_sampler(name: str) -> Sampler:
    """The registry's row for ``name``; a ValueError naming the choices when there is none."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not supported; choose one of {', '.join(map(repr, SAMPLERS))}")
    return SAMPLERS[name]


def plan(name: str, schedule: Schedule, steps: int, eta: float = 0.0) -> Plan:
    """Validate the sampler settings and plan one run: the sampler of ``name`` with its timesteps and arguments.

    ``eta`` is used by the samplers that take it (``ddim``) and ignored by the others."""
    sampler = get_sampler(name)
    timesteps, kwargs = sampler.plan(schedule, steps, eta)
    return Plan(sampler, timesteps, kwargs)

