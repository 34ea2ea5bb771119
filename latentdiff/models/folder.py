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
from pathlib import Path

import torch

from ..core.schedule import PREDICTION_TYPES, Schedule
from .components import Components, ModelError, freeze
from .device import pick_device, pick_dtype

log = logging.getLogger(__name__)

COMPONENTS = {  # folder -> file that must be in it
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")  # a single-file model, rather than a folder
# The offline default model (the shapes world), committed in the repository; LATENTDIFF_MODEL overrides it.
DEFAULT_MODEL = Path(os.environ.get("LATENTDIFF_MODEL", Path(__file__).resolve().parents[2] / "weights" / "shapes"))


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A local folder, or a hub id found in the local Hugging Face cache (never downloaded)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"model '{model}' is a file, not a folder; pass a diffusers-layout model folder (latentdiff "
                         "convert makes one from a single-file checkpoint)")
    if str(model).count("/") == 1 and not str(model).startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(model), local_files_only=True))
        except Exception:
            pass
    raise ModelError(
        f"model '{model}' does not exist: pass a folder in the diffusers layout "
        "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), a hub id already in the local cache, "
        "or a single-file checkpoint (.safetensors)"
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


def load_components(
    model: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "auto",
    allow_pickle: bool = False,
    with_unet: bool = True,
    vae: str | os.PathLike | None = None,
    prediction_type: str | None = None,
) -> Components:
    """Load a model with frozen networks: a diffusers-layout folder, a hub id in the local cache, or a single-file
    Stable Diffusion 1.x / 2.x checkpoint (``.safetensors``; ``.ckpt`` / ``.pt`` only with ``allow_pickle``), ε or v
    prediction, text-to-image or 9-channel inpainting (see :mod:`.single_file` for what a file is read as).

    ``with_unet=False`` loads only the frozen encoders, tokenizer and schedule (``unet`` is None), for
    training a UNet from scratch on top of them. ``vae`` replaces the model's VAE: a diffusers VAE folder or a VAE
    ``.safetensors`` file (original or diffusers key names), whose latent channels must be the UNet's.
    ``prediction_type`` ('epsilon' or 'v_prediction') overrides the model's scheduler config (and, for a single
    file, the YAML beside it).
    """
    device = device if isinstance(device, torch.device) else pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ModelError(f"prediction_type={prediction_type!r} is not supported; choose one of "
                         f"{', '.join(map(repr, PREDICTION_TYPES))}")
    if vae is not None and not Path(vae).expanduser().exists():
        raise ModelError(f"VAE '{vae}' does not exist; pass a diffusers VAE folder or a VAE .safetensors file")
    file = Path(model).expanduser()
    if file.is_file():
        from .single_file import load_single_file

        components = load_single_file(file.resolve(), dtype=torch_dtype, allow_pickle=allow_pickle,
                                      with_unet=with_unet, prediction_type=prediction_type)
    elif file.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise ModelError(f"checkpoint file '{model}' does not exist; check the path")
    else:
        components = load_folder(resolve_model_path(model).resolve(), torch_dtype, allow_pickle, with_unet)
        if prediction_type is not None:
            components.scheduler_config = dict(components.scheduler_config, prediction_type=prediction_type)
    if vae is not None:
        components.vae = swap_vae(components, vae, torch_dtype, allow_pickle)
    Schedule.from_config(components.scheduler_config)  # fail now, with its message, if the schedule is unusable
    for module in (components.unet, components.vae, components.text_encoder):
        if module is not None:
            freeze(module).to(device)
    return components


def load_folder(path: Path, torch_dtype: torch.dtype, allow_pickle: bool, with_unet: bool) -> Components:
    """The networks of a diffusers-layout folder, on the CPU (not yet frozen)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

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
    return Components(unet, vae, text_encoder, tokenizer, scheduler_config, path)


def swap_vae(components: Components, vae: str | os.PathLike, torch_dtype: torch.dtype, allow_pickle: bool):
    """The VAE at ``vae`` for ``components``; a file gets the model's latent scale, a folder keeps its own."""
    from .single_file import load_vae

    old = components.vae.config
    new = load_vae(vae, dtype=torch_dtype, allow_pickle=allow_pickle, scaling_factor=old.scaling_factor,
                   sample_size=old.sample_size)
    channels = components.unet.config.out_channels if components.unet is not None else old.latent_channels
    if new.config.latent_channels != channels:
        raise ModelError(f"VAE '{vae}' has {new.config.latent_channels} latent channels but the model's UNet works on "
                         f"{channels}; use a VAE made for this model")
    if new.config.scaling_factor != old.scaling_factor:
        log.warning("VAE '%s' scales latents by %s where the model's VAE used %s; keeping the new VAE's",
                    vae, new.config.scaling_factor, old.scaling_factor)
    return new


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
