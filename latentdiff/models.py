"""Load and save the frozen networks of a diffusers-layout model folder; encode prompts, latents and images.

A model folder is what ``StableDiffusionPipeline.save_pretrained`` writes: ``model_index.json`` and
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``. Weights are read from
safetensors only, unless the caller explicitly allows pickles.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .schedule import Schedule

log = logging.getLogger(__name__)

COMPONENTS = {  # folder -> file that must be in it
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")
# The offline default model (the shapes world), committed in the repository; LATENTDIFF_MODEL overrides it.
DEFAULT_MODEL = Path(os.environ.get("LATENTDIFF_MODEL", Path(__file__).resolve().parent.parent / "weights" / "shapes"))


class ModelError(ValueError):
    """A model folder that cannot be used, with a one-line reason and fix."""


def pick_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not supported; choose one of {', '.join(map(repr, DEVICES))}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(device)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX, Arm's BF16 extension), read from
    /proc/cpuinfo. Without it PyTorch emulates bf16 and a bf16 UNet step runs several times slower than fp32."""
    try:
        with open(cpuinfo) as f:
            flags = {w for line in f if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def pick_mixed_precision(choice: str, device: torch.device) -> str:
    """Accelerate's mixed_precision for ``choice``; 'auto' is bf16 where the hardware computes it (Ampere+ GPUs,
    CPUs with native bf16), fp16 on older GPUs, else no (fp32)."""
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


def pick_dtype(dtype: str | torch.dtype = "fp32", device: torch.device | None = None) -> torch.dtype:
    """'auto' is fp16 on a CUDA device (as Stable Diffusion is usually run), fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device is not None and device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        choices = ", ".join(map(repr, ("auto", *DTYPES)))
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {choices}")
    return DTYPES[dtype]


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A local folder, or a hub id found in the local Hugging Face cache (never downloaded)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"model '{model}' is a file, not a folder; pass a diffusers-layout model folder")
    if str(model).count("/") == 1 and not str(model).startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(model), local_files_only=True))
        except Exception:
            pass
    raise ModelError(
        f"model '{model}' does not exist: pass a folder in the diffusers layout "
        "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a hub id already in the local cache"
    )


def check_model_folder(path: Path, need_unet: bool = True) -> None:
    """Raise a ModelError naming the first missing piece of a diffusers-layout folder."""
    if not (path / "model_index.json").is_file():
        raise ModelError(f"model folder '{path}' has no model_index.json; it is not a diffusers-layout model folder")
    for folder, required in COMPONENTS.items():
        if folder == "unet" and not need_unet:
            continue
        if not (path / folder / required).is_file():
            raise ModelError(f"model folder '{path}' is missing its {folder}/ component ({folder}/{required})")


def _check_weights(path: Path, folder: str, allow_pickle: bool) -> None:
    files = list((path / folder).glob("*.safetensors"))
    if files:
        return
    if list((path / folder).glob("*.bin")) and not allow_pickle:
        raise ModelError(
            f"'{path / folder}' has only pickle weights (.bin), which are not loaded by default; "
            "convert them to safetensors or pass allow_pickle=True (--allow-pickle) if you trust the file"
        )
    if not allow_pickle:
        raise ModelError(f"'{path / folder}' has no weights (*.safetensors)")


@dataclass
class Components:
    """The frozen networks and schedule of one model, on one device and dtype."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    path: Optional[Path] = None

    @property
    def schedule(self) -> Schedule:
        return Schedule.from_config(self.scheduler_config)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side: 2^(number of VAE down blocks − 1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return (self.unet if self.unet is not None else self.text_encoder).device

    @property
    def dtype(self) -> torch.dtype:
        return (self.unet if self.unet is not None else self.text_encoder).dtype


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def load_components(
    model: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "auto",
    allow_pickle: bool = False,
    with_unet: bool = True,
) -> Components:
    """Load a diffusers-layout folder (SD 1.x / 2.x shapes, ε or v prediction) with frozen networks.

    ``with_unet=False`` loads only the frozen encoders, tokenizer and schedule (``unet`` is None), for
    training a UNet from scratch on top of them.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device = device if isinstance(device, torch.device) else pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    path = resolve_model_path(model).resolve()
    check_model_folder(path, need_unet=with_unet)
    for folder in ("unet", "vae", "text_encoder") if with_unet else ("vae", "text_encoder"):
        _check_weights(path, folder, allow_pickle)
    safetensors = None if allow_pickle else True
    try:
        unet = None
        if with_unet:
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype,
                                                        use_safetensors=safetensors)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype, use_safetensors=safetensors)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=torch_dtype,
                                                     use_safetensors=safetensors)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"could not load model folder '{path}': {first_line}") from error
    scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    Schedule.from_config(scheduler_config)  # fail now, with its message, if the schedule is unusable
    for module in (unet, vae, text_encoder):
        if module is not None:
            freeze(module).to(device)
    return Components(unet, vae, text_encoder, tokenizer, scheduler_config, path)


def save_components(components: Components, folder: str | os.PathLike, scheduler_class: str = "DDIMScheduler") -> Path:
    """Write a complete diffusers-layout folder; written to a temporary name and renamed when complete."""
    from diffusers import StableDiffusionPipeline
    import diffusers

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scheduler = getattr(diffusers, scheduler_class).from_config(components.scheduler_config)
    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


# --- encoding ------------------------------------------------------------------------------------


def tokenize(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (B, L), padded/truncated to ``tokenizer.model_max_length``.

    Prompts that do not fit are truncated with a warning that names the dropped words.
    """
    max_length = tokenizer.model_max_length
    batch = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                      return_tensors="pt")
    ids = batch.input_ids
    full = tokenizer(list(prompts), padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > ids.shape[-1]:
        for dropped in tokenizer.batch_decode(full[:, max_length - 1 : -1]):
            dropped = dropped.replace(tokenizer.pad_token or "", "").replace(tokenizer.eos_token or "", "").strip()
            if dropped:
                log.warning("prompt longer than %d tokens, truncated; dropped: %r", max_length, dropped)
    return ids, batch.attention_mask


@torch.inference_mode()
def encode_prompts(components: Components, prompts: Sequence[str]) -> torch.Tensor:
    """Last hidden states of the text encoder, (B, L, D), in the model's dtype."""
    ids, mask = tokenize(components.tokenizer, prompts)
    encoder = components.text_encoder
    mask = mask.to(encoder.device) if getattr(encoder.config, "use_attention_mask", False) else None
    return encoder(ids.to(encoder.device), attention_mask=mask)[0].to(encoder.dtype)


@torch.inference_mode()
def encode_images(components: Components, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE's latent distribution q(z | x) for images in [-1, 1], each (B, C, H/f, W/f)."""
    vae = components.vae
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def scale_latents(components: Components, z: torch.Tensor) -> torch.Tensor:
    """VAE latents → diffusion latents: (z − shift) × scaling_factor, read from the VAE config."""
    config = components.vae.config
    shift = getattr(config, "shift_factor", None) or 0.0
    return (z - shift) * config.scaling_factor


@torch.inference_mode()
def decode_latents(components: Components, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode of diffusion latents to images in [0, 1], (B, 3, H, W) float32.

    In the VAE's dtype, as diffusers' StableDiffusionPipeline decodes; should an fp16 decode overflow (some VAEs
    do: SDXL's, marked ``force_upcast``), that batch is decoded again in fp32 instead of returning NaNs."""
    vae = components.vae
    latents = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):
        latents = latents + vae.config.shift_factor
    images = vae.decode(latents.to(vae.dtype)).sample
    if vae.dtype == torch.float16 and not torch.isfinite(images).all():
        log.warning("the fp16 VAE decode overflowed; decoding again in fp32")
        torch.nn.Module.to(vae, torch.float32)  # nn.Module's .to: diffusers' adds a warning per call
        try:
            images = vae.decode(latents.float()).sample
        finally:
            torch.nn.Module.to(vae, torch.float16)
    return (images / 2 + 0.5).clamp(0, 1).float()  # rescaled in the decode's dtype, as diffusers does


def vae_round_trip(components: Components, images: Sequence) -> list:
    """PIL images (all one size, a multiple of the VAE factor) → encode to the posterior mean → decode → PIL."""
    import numpy as np
    from PIL import Image

    from .stages import to_pixels

    mean, _ = encode_images(components, to_pixels(torch.from_numpy(np.stack([np.asarray(i.convert("RGB"))
                                                                             for i in images]))))
    return [Image.fromarray(a) for a in to_uint8(decode_latents(components, scale_latents(components, mean)))]


def to_uint8(images: torch.Tensor):
    """(B, 3, H, W) in [0, 1] → list of (H, W, 3) uint8 arrays, rounded as diffusers rounds."""
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    return [(a * 255).round().astype("uint8") for a in array]
