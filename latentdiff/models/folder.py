"""Load and save the frozen networks of a diffusers-layout model folder; the offline default model.

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
from typing import Optional

import torch

from ..core.schedule import Schedule
from .device import pick_device, pick_dtype

log = logging.getLogger(__name__)

COMPONENTS = {  # folder -> file that must be in it
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}
# The offline default model (the shapes world), committed in the repository; LATENTDIFF_MODEL overrides it.
DEFAULT_MODEL = Path(os.environ.get("LATENTDIFF_MODEL", Path(__file__).resolve().parents[2] / "weights" / "shapes"))


class ModelError(ValueError):
    """A model folder that cannot be used, with a one-line reason and fix."""


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


def check_weights(path: Path, folder: str, allow_pickle: bool) -> None:
    """Raise a ModelError unless ``path/folder`` holds safetensors weights (or, with ``allow_pickle``, any)."""
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
        check_weights(path, folder, allow_pickle)
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
    import diffusers
    from diffusers import StableDiffusionPipeline

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




MODEL_INDEX = {  # what StableDiffusionPipeline.save_pretrained writes for a text-to-image model folder
    "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None], "safety_checker": [None, None],
    "requires_safety_checker": False, "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}


def write_encoders_folder(folder: str | os.PathLike, scheduler_config: dict) -> Path:
    """Complete a folder that holds ``vae/``, ``text_encoder/`` and ``tokenizer/`` into the diffusers layout without
    ``unet/``: the schedule and ``model_index.json``. It is what training a UNet from scratch loads as frozen
    (``load_components(..., with_unet=False)``); the trained model is then saved whole by :func:`save_components`."""
    folder = Path(folder)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return folder


def copy_as_fp16(model_dir: str | os.PathLike, dest: str | os.PathLike, extra_files: dict | None = None) -> Path:
    """Copy a model folder with every floating-point weight stored in fp16 (it still loads as fp32 by default),
    plus ``extra_files`` (name → JSON content); written to a temporary name and renamed, replacing ``dest``.

    Configs lose ``_name_or_path``: the folder names of the machine that wrote them mean nothing to a user."""
    from safetensors.torch import load_file, save_file

    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    for file in tmp.rglob("*.safetensors"):
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(file)).items()}
        save_file(tensors, str(file), metadata={"format": "pt"})
    for file in tmp.rglob("config.json"):
        config = json.loads(file.read_text())
        if config.pop("_name_or_path", None) is not None:
            file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name, content in (extra_files or {}).items():
        (tmp / name).write_text(json.dumps(content, indent=2))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest
