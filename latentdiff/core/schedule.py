"""The noise schedule of a discrete-time diffusion model: betas, ᾱ_t, q(x_t | x_0), targets, timesteps.

All schedule arithmetic is done in float64; tensors handed back to the model side are cast to the
dtype of the data they combine with. Names of configuration keys follow diffusers' scheduler configs
(``scheduler/scheduler_config.json``) so that a Stable Diffusion folder describes its own schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_large")


def check_choice(name: str, value, allowed) -> None:
    """Raise a ValueError naming the argument and its allowed values when ``value`` is not one of them."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}")


def make_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
) -> torch.Tensor:
    """β_1..β_T in float64 for a named schedule (as diffusers names them)."""
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps={num_train_timesteps!r} must be a positive integer")
    T = num_train_timesteps
    if beta_schedule == "linear":  # Ho et al. 2020, §4
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if beta_schedule == "scaled_linear":  # Stable Diffusion: linear in √β
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2

    # squaredcos_cap_v2: Nichol & Dhariwal 2021, eq. 17, with β clipped at 0.999
    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ_t so that ᾱ_T = 0 while ᾱ_1 is kept (Lin et al. 2023, Algorithm 1)."""
    sqrt_ab = torch.cumprod(1 - betas.double(), 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


def check_steps(num_steps, num_train_timesteps: int) -> None:
    """Raise a ValueError naming ``steps`` unless it is an integer in [1, num_train_timesteps]."""
    if not isinstance(num_steps, int) or not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"steps={num_steps!r} must be an integer between 1 and num_train_timesteps={num_train_timesteps}"
        )


ZERO_SNR_ALPHA_BAR = 2.0**-24  # ᾱ given to a zero-SNR step by samplers that need a finite σ/α (diffusers' choice)


def noise_levels(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """k = σ/α = √((1−ᾱ)/ᾱ) of every training timestep (ascending in t), as the σ-based samplers (DPM-Solver,
    Euler) use them; ᾱ = 0 (zero terminal SNR) is lifted to 2⁻²⁴ so that k stays finite."""
    alpha_bar = alphas_cumprod.double().clone()
    alpha_bar[alpha_bar == 0] = ZERO_SNR_ALPHA_BAR
    return ((1 - alpha_bar) / alpha_bar).sqrt().numpy()


def inference_timesteps(
    num_steps: int, num_train_timesteps: int, spacing: str = "leading", steps_offset: int = 0
) -> list[int]:
    """The N timesteps visited at inference, in descending order, exactly as diffusers spaces them.

    ``leading``: multiples of ⌊T/N⌋ plus ``steps_offset``; ``trailing``: counted down from T−1 in
    steps of T/N; ``linspace``: N points rounded from [0, T−1] (Lin et al. 2023, Table 2).
    """
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    check_steps(num_steps, num_train_timesteps)
    T, N = num_train_timesteps, num_steps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, N) * (T // N)).round()[::-1].astype(np.int64) + steps_offset
    else:
        ts = np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1
    if ts[0] >= T:
        raise ValueError(
            f"steps={N} with timestep_spacing='leading' and steps_offset={steps_offset} reaches timestep "
            f"{ts[0]} >= num_train_timesteps={T}; use fewer steps or steps_offset=0"
        )
    return [int(t) for t in ts]


def x0_eps_coefficients(alpha_bar: float, prediction_type: str) -> tuple[float, float, float, float]:
    """(p, q, r, s) with x̂_0 = p·x_t + q·out and ε̂ = r·x_t + s·out for a model output ``out``.

    From x_t = √ᾱ x_0 + √(1−ᾱ) ε (Ho et al. 2020, eq. 4) and v = √ᾱ ε − √(1−ᾱ) x_0
    (Salimans & Ho 2022, §4): every parameterization is a linear map of (x_t, out).
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    a, b = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    if prediction_type == "v_prediction":
        return a, -b, b, a
    if prediction_type == "epsilon":
        if a == 0:
            raise ValueError(
                "prediction_type='epsilon' cannot predict x_0 at a timestep with zero SNR (ᾱ_t = 0); "
                "use v_prediction or a timestep spacing that avoids the last training step"
            )
        return 1 / a, -b / a, 0.0, 1.0
    if b == 0:
        raise ValueError(
            "prediction_type='sample' cannot predict ε where ᾱ_t = 1; set set_alpha_to_one=False"
        )
    return 0.0, 1.0, 1 / b, -a / b


def _per_sample(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] cast to ``like``'s dtype/device, shaped (B, 1, …, 1) to broadcast over ``like``."""
    out = values.to(t.device)[t.long()].to(like.dtype).to(like.device)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


@dataclass
class Schedule:
    """A trained model's noise schedule plus the sampler settings stored next to it.

    Build with :meth:`make` or from a diffusers scheduler config with :meth:`from_config`.
    """

    betas: torch.Tensor  # (T,) float64
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    variance_type: str = "fixed_small"
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)  # (T,) float64, ᾱ_t

    def __post_init__(self):
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("variance_type", self.variance_type, VARIANCE_TYPES)
        self.betas = torch.as_tensor(self.betas, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)

    @classmethod
    def make(
        cls,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        rescale_betas_zero_snr: bool = False,
        **settings,
    ) -> Schedule:
        """A schedule from its recipe; ``settings`` are the remaining dataclass fields."""
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas, **settings)

    @classmethod
    def from_config(cls, config: dict) -> Schedule:
        """Read a diffusers scheduler config (DDIM/DDPM/PNDM/… keys); missing keys take diffusers' defaults."""
        if config.get("thresholding"):
            raise ValueError("scheduler config has thresholding=True; dynamic thresholding is not supported")
        names = {f.name for f in fields(cls) if f.init and f.name != "betas"}
        settings = {k: v for k, v in config.items() if k in names}
        settings.setdefault("clip_sample", True)  # diffusers' DDIM/DDPM default
        if settings.get("variance_type") not in VARIANCE_TYPES:
            settings.pop("variance_type", None)  # e.g. None in DDIM configs; used by DDPM only
        if config.get("trained_betas") is not None:
            return cls(torch.tensor(config["trained_betas"], dtype=torch.float64), **settings)
        return cls.make(
            beta_schedule=config.get("beta_schedule", "linear"),
            num_train_timesteps=config.get("num_train_timesteps", 1000),
            beta_start=config.get("beta_start", 0.0001),
            beta_end=config.get("beta_end", 0.02),
            rescale_betas_zero_snr=config.get("rescale_betas_zero_snr", False),
            **settings,
        )

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def final_alpha_cumprod(self) -> float:
        """ᾱ used past the last step (t < 0): 1 with ``set_alpha_to_one``, else ᾱ_0 (Song et al. 2021)."""
        return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t as a float; t < 0 means 'before the first step'."""
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def timesteps(self, num_steps: int) -> list[int]:
        """Descending inference timesteps for ``num_steps`` steps with this schedule's spacing."""
        return inference_timesteps(num_steps, self.num_train_timesteps, self.timestep_spacing, self.steps_offset)

    # --- forward process and training targets -------------------------------------------------

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0): x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Ho et al. 2020, eq. 4); t is (B,) ints."""
        ab = self.alphas_cumprod
        return _per_sample(ab.sqrt(), t, x0) * x0 + _per_sample((1 - ab).sqrt(), t, x0) * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022, §4)."""
        ab = self.alphas_cumprod
        return _per_sample(ab.sqrt(), t, x0) * noise - _per_sample((1 - ab).sqrt(), t, x0) * x0

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model should output at x_t = add_noise(x0, noise, t) for this prediction type."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.velocity(x0, noise, t)
        return x0

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1−ᾱ_t) in float64, shape of t."""
        ab = self.alphas_cumprod.to(t.device)[t.long()]
        return ab / (1 - ab)

    # --- conversions between parameterizations -------------------------------------------------

    def predict_x0_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) implied by a model output at integer timestep t."""
        p, q, r, s = x0_eps_coefficients(self.alpha_bar(t), self.prediction_type)
        return p * x_t + q * model_output, r * x_t + s * model_output


def convert(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: float, source: str, dest: str
) -> torch.Tensor:
    """Re-express a prediction of one type (``epsilon``/``v_prediction``/``sample``) as another."""
    check_choice("dest", dest, PREDICTION_TYPES)
    p, q, r, s = x0_eps_coefficients(alpha_bar, source)
    x0, eps = p * x_t + q * model_output, r * x_t + s * model_output
    if dest == "sample":
        return x0
    if dest == "epsilon":
        return eps
    return math.sqrt(alpha_bar) * eps - math.sqrt(1 - alpha_bar) * x0
