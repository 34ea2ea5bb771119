"""An exact denoiser for Gaussian data, for self-checks and benchmarks of the samplers."""

from __future__ import annotations

import math

import torch

from .schedule import Schedule, convert


class GaussianDenoiser:
    """The Bayes-optimal denoiser for data x_0 ~ N(mu, std² I), in the schedule's parameterization.

    E[x_0 | x_t] = mu + √ᾱ std² (x_t − √ᾱ mu) / (ᾱ std² + 1 − ᾱ). Its probability-flow ODE is exact,
    so DDIM trajectories stay bounded and inversion errors come from discretization alone.
    """

    def __init__(self, schedule: Schedule, mu: float = 0.3, std: float = 0.5):
        self.schedule, self.mu, self.std = schedule, mu, std

    def x0(self, x: torch.Tensor, t: int) -> torch.Tensor:
        a = self.schedule.alpha_bar(t)
        return self.mu + math.sqrt(a) * self.std**2 * (x - math.sqrt(a) * self.mu) / (a * self.std**2 + 1 - a)

    def flow_map(self, x0: torch.Tensor, t: int) -> torch.Tensor:
        """Where the exact probability-flow ODE carries x_0 at timestep t."""
        a = self.schedule.alpha_bar(t)
        return math.sqrt(a) * self.mu + math.sqrt(a * self.std**2 + 1 - a) * (x0 - self.mu) / self.std

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return convert(self.x0(x, t), x, self.schedule.alpha_bar(t), "sample", self.schedule.prediction_type)
