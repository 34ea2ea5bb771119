"""latentdiff: latent diffusion text-to-image, fine-tuning and editing, numerically equal to diffusers."""

from .core.dpm_solver import dpm_timesteps, karras_timesteps, sample_dpmpp_2m
from .core.euler import euler_timesteps, sample_euler
from .core.guidance import CFGDenoiser, rescale_guidance
from .core.sampling import ddim_invert, ddim_step, ddpm_step, sample_ddim, sample_ddpm
from .core.schedule import Schedule, inference_timesteps, make_betas

__version__ = "0.1.0"
__all__ = [
    "CFGDenoiser",
    "Schedule",
    "ddim_invert",
    "ddim_step",
    "ddpm_step",
    "dpm_timesteps",
    "euler_timesteps",
    "inference_timesteps",
    "karras_timesteps",
    "make_betas",
    "rescale_guidance",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
]
