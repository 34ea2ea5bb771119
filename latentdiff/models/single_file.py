"""Load a Stable Diffusion 1.x / 2.x single-file checkpoint, and a VAE from a folder or a file.

A checkpoint in the original latent-diffusion layout (see :mod:`.checkpoint_keys`) loads as :class:`Components`:
ε or v prediction, 4- or 9-channel (inpainting) UNets, fp16 / bf16 / fp32 tensors. The UNet weights used are the
file's ``model.diffusion_model.*``; the EMA copy some training checkpoints also carry (``model_ema.*``) is not read
(in released SD files the EMA weights already are ``model.diffusion_model.*``). What the file cannot say comes from
the YAML beside it or from SD's conventions (:mod:`.checkpoint_config`).

Memory: the networks are built on the meta device and each tensor is read, cast and assigned on its own, so a
multi-GB file is never held twice. Tensors already in the asked dtype stay memory-mapped (``safetensors.safe_open``:
resident once read, copied on write, as diffusers' folder loads); the others are read into memory of their own and
cast one by one. ``.ckpt`` / ``.pt`` files are pickles: read only with ``allow_pickle=True``, with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional

import torch

from .checkpoint_config import (
    FAMILY_NAME,
    SD_SCALE_FACTOR,
    TEXT_PAD,
    prediction_from,
    read_original_config,
    resolution_from,
    scheduler_config,
    text_config,
    unet_config,
    vae_config,
)
from .checkpoint_keys import (
    CLIP_POSITION_IDS,
    CLIP_PREFIX,
    OPENCLIP_PREFIX,
    OPENCLIP_UNUSED,
    SDXL_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    is_vae_attention_weight,
    openclip_key,
    unet_key,
    vae_key,
)
from .components import Components, ModelError
from .tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
VAE_PREFIXES = (VAE_PREFIX, "vae.", "")  # a whole checkpoint's VAE, diffusers' single-file name, a VAE file
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
DEPRECATED_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}  # old diffusers
FOLDER_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what a folder load reads (not a .fp16 variant)
NameOf = Callable[[str], tuple[str, Optional[int]]]  # diffusers key → (key in the file, part of a fused q/k/v)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Checkpoint:
    """The tensors of one checkpoint file by name, read one at a time; their shapes without reading them."""

    def __init__(self, path: Path, allow_pickle: bool = False):
        self.path, self._stack = path, ExitStack()
        if path.suffix.lower() in PICKLE_SUFFIXES:
            self._tensors, self.metadata = self._load_pickle(path, allow_pickle), {}
            self._shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
            return
        from safetensors import safe_open

        try:
            self._file = self._stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
            self.metadata = self._file.metadata() or {}
            self._shapes = {k: tuple(self._file.get_slice(k).get_shape()) for k in self._file.keys()}
        except Exception as error:  # safetensors' SafetensorError for a file that is not one, or is cut short
            self.close()
            raise ModelError(f"'{path}' is not a readable .safetensors checkpoint ({first_line(error)}); check the "
                             "file (an incomplete download, or not a model at all)") from None
        self._tensors, self._layout = None, None

    @staticmethod
    def _load_pickle(path: Path, allow_pickle: bool) -> dict:
        if not allow_pickle:
            raise ModelError(f"'{path}' is a pickle checkpoint ({path.suffix}), which is not loaded by default; "
                             "convert it to .safetensors or pass allow_pickle=True (--allow-pickle) for a file you trust")
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ModelError(f"'{path}' is not a readable tensor checkpoint ({first_line(error)})") from None
        while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ModelError(f"'{path}' holds a {type(state).__name__}, not a state dict of tensors")
        return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}

    @property
    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> Optional[tuple]:
        return self._shapes.get(key)

    def dtype(self, key: str) -> torch.dtype:
        if self._tensors is not None:
            return self._tensors[key].dtype
        return SAFETENSORS_DTYPES.get(self._file.get_slice(key).get_dtype(), torch.float32)

    def get(self, key: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The tensor ``key``; stored in ``dtype`` (or None), it stays memory-mapped (resident only once read, copied
        on write). Another dtype's is read into memory of its own, so that casting it leaves no file pages behind:
        an fp16 file loaded as fp32 then peaks at the fp32 model, not the model plus the file."""
        if self._tensors is not None:
            return self._tensors.pop(key)  # pop: a converted tensor is not held twice
        if dtype is None or self.dtype(key) == dtype or not dtype.is_floating_point:
            return self._file.get_tensor(key)
        if self._layout is None:
            self._layout = self._read_header()
        data_type, shape, (start, end) = self._layout[key]
        out = torch.empty(end - start, dtype=torch.uint8)
        self._raw.seek(start)
        if self._raw.readinto(out.numpy()) != end - start:
            raise ModelError(f"'{self.path}' ends inside tensor {key}; the file is incomplete")
        return out.view(SAFETENSORS_DTYPES[data_type]).reshape(shape)

    def _read_header(self) -> dict:
        """{key: (dtype, shape, (start, end) in the file)}, from the safetensors header (8-byte length, then JSON)."""
        self._raw = self._stack.enter_context(open(self.path, "rb", buffering=0))
        size = int.from_bytes(self._raw.read(8), "little")
        header = json.loads(self._raw.read(size))
        base = 8 + size
        return {k: (v["dtype"], v["shape"], (base + v["data_offsets"][0], base + v["data_offsets"][1]))
                for k, v in header.items() if k != "__metadata__"}

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def has(keys, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def vae_layout(keys) -> Optional[tuple[str, str]]:
    """(prefix, 'original' | 'diffusers') of the VAE tensors among ``keys``, or None."""
    for prefix in VAE_PREFIXES:
        if prefix + "encoder.down.0.block.0.conv1.weight" in keys:
            return prefix, "original"
        if prefix + "encoder.down_blocks.0.resnets.0.conv1.weight" in keys:
            return prefix, "diffusers"
    return None


def model_family(path: Path, keys) -> str:
    """'sd1' (CLIP text encoder) or 'sd2' (OpenCLIP); a one-line ModelError for anything else."""
    if has(keys, SDXL_PREFIX):
        raise ModelError(f"checkpoint '{path}' is an SDXL checkpoint (conditioner.embedders.*); latentdiff loads "
                         "Stable Diffusion 1.x and 2.x checkpoints")
    if not has(keys, UNET_PREFIX):
        if vae_layout(keys) is not None:
            raise ModelError(f"'{path}' holds a VAE alone, not a whole model; pass it as vae= (--vae) with a model")
        raise ModelError(f"'{path}' has no Stable Diffusion UNet (model.diffusion_model.*); it is not a Stable "
                         "Diffusion 1.x/2.x checkpoint")
    if has(keys, CLIP_PREFIX):
        return "sd1"
    if has(keys, OPENCLIP_PREFIX):
        return "sd2"
    raise ModelError(f"checkpoint '{path}' has no text encoder (cond_stage_model.transformer.* of SD 1.x or "
                     "cond_stage_model.model.* of SD 2.x); it is not a whole Stable Diffusion 1.x/2.x checkpoint")


def empty(cls, config):
    """A network of ``cls`` with its parameters on the meta device (no memory, no random init)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)


def load_into(module: torch.nn.Module, ckpt: Checkpoint, prefix: str, name_of: NameOf, dtype: torch.dtype) -> None:
    """Fill a meta-device ``module`` from the file, tensor by tensor, cast to ``dtype`` (floating tensors only)."""
    state, fused = {}, {}
    for key, target in module.state_dict(keep_vars=True).items():
        name, part = name_of(key)
        if part is None:
            tensor = ckpt.get(prefix + name, dtype)
        else:  # one third of a fused q/k/v projection, read once
            if name not in fused:
                fused[name] = ckpt.get(prefix + name, dtype)
            tensor = fused[name].chunk(3)[part].clone()
        if tensor.shape != target.shape:
            if not (is_vae_attention_weight(name) and tensor.numel() == target.numel()):
                raise ModelError(f"checkpoint '{ckpt.path}': {prefix + name} has shape {tuple(tensor.shape)} where "
                                 f"the network needs {tuple(target.shape)}; it is not in a layout latentdiff knows")
            tensor = tensor.reshape(target.shape)  # a 1×1 convolution read as a linear layer
        state[key] = tensor.to(dtype).contiguous() if tensor.is_floating_point() else tensor
    module.load_state_dict(state, strict=True, assign=True)


def check_keys(ckpt: Checkpoint, wanted: set[str], ours: tuple[str, ...], extra: Callable[[str], bool],
               what: str) -> None:
    """A ModelError unless the file's tensors under ``ours`` are exactly ``wanted`` (plus ``extra`` ones)."""
    missing = sorted(wanted - set(ckpt.keys))
    if missing:
        raise ModelError(f"'{ckpt.path}' lacks {len(missing)} tensors of a {what} (first: {missing[0]}); the file "
                         "is incomplete or of another architecture")
    unexpected = sorted(k for k in ckpt.keys if k.startswith(ours) and k not in wanted and not extra(k))
    if unexpected:
        raise ModelError(f"'{ckpt.path}' has {len(unexpected)} tensors a {what} does not (first: {unexpected[0]}); "
                         "it is of an architecture latentdiff does not load (Stable Diffusion 1.x and 2.x)")


def load_single_file(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, allow_pickle: bool = False,
                     with_unet: bool = True, prediction_type: Optional[str] = None) -> Components:
    """The networks of a single-file SD 1.x / 2.x checkpoint, on the CPU in ``dtype`` (not yet frozen).

    ``prediction_type`` (``'epsilon'`` / ``'v_prediction'``) overrides the YAML beside the file and the file's
    metadata; without any of them it is ε: an SD 2.x 768-v file needs one of the three (a 512 SD 2.x base is ε)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    original = read_original_config(path)
    params = original.get("model", {}).get("params", {}) if original else {}
    unet_params = ((params.get("unet_config") or {}).get("params") or {}) if isinstance(params, dict) else {}
    with Checkpoint(path, allow_pickle) as ckpt:
        keys = set(ckpt.keys)
        family = model_family(path, keys)
        prediction = prediction_from(params, ckpt.metadata, prediction_type)
        resolution = resolution_from(ckpt.metadata, family, prediction)
        vae_cfg = vae_config(path, ckpt.shape, keys, VAE_PREFIX, "original",
                             float(params.get("scale_factor", SD_SCALE_FACTOR)), resolution)
        levels = len(vae_cfg["block_out_channels"])
        unet_cfg = unet_config(path, ckpt.shape, keys, family, unet_params, resolution // 2 ** (levels - 1))
        if unet_cfg["in_channels"] not in (4, 9) or unet_cfg["out_channels"] != vae_cfg["latent_channels"]:
            raise ModelError(f"checkpoint '{path}': its UNet maps {unet_cfg['in_channels']} to "
                             f"{unet_cfg['out_channels']} channels over a {vae_cfg['latent_channels']}-channel VAE; "
                             "latentdiff loads text-to-image (4 in) and inpainting (9 in) UNets")
        text_fields, blocks = text_config(path, ckpt.shape, keys, family)
        tokenizer = build_clip_tokenizer(text_fields["max_position_embeddings"], pad_token=TEXT_PAD[family])
        if text_fields["vocab_size"] != len(tokenizer):
            raise ModelError(f"checkpoint '{path}': its text encoder has {text_fields['vocab_size']} tokens where "
                             f"CLIP's tokenizer has {len(tokenizer)}; it is not a Stable Diffusion text encoder")
        text_cfg = CLIPTextConfig(**text_fields, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        up_attention = [t.startswith("CrossAttn") for t in unet_cfg["up_block_types"]]
        layers = unet_cfg["layers_per_block"]
        text_prefix = CLIP_PREFIX if family == "sd1" else OPENCLIP_PREFIX
        plans = [(empty(AutoencoderKL, vae_cfg), VAE_PREFIX, lambda k: (vae_key(k, levels), None)),
                 (empty(CLIPTextModel, text_cfg), text_prefix,
                  (lambda k: (k, None)) if family == "sd1" else openclip_key)]
        if with_unet:
            plans.insert(0, (empty(UNet2DConditionModel, unet_cfg), UNET_PREFIX,
                             lambda k: (unet_key(k, layers, up_attention), None)))
        unused = (CLIP_PREFIX + CLIP_POSITION_IDS, *(OPENCLIP_PREFIX + n for n in OPENCLIP_UNUSED))
        skipped = (VAE_PREFIX + "loss.",) + (() if with_unet else (UNET_PREFIX,))  # the VAE's training loss nets
        last_block = f"{OPENCLIP_PREFIX}transformer.resblocks.{blocks - 1}."  # SD 2.x: its penultimate layer is used

        def extra(key: str) -> bool:
            return key in unused or key.startswith(skipped) or (family == "sd2" and key.startswith(last_block))

        wanted = {prefix + name_of(k)[0] for module, prefix, name_of in plans for k in module.state_dict()}
        check_keys(ckpt, wanted, (UNET_PREFIX, VAE_PREFIX, text_prefix), extra, FAMILY_NAME[family] + " model")
        for module, prefix, name_of in plans:
            load_into(module, ckpt, prefix, name_of, dtype)
    unet = plans[0][0] if with_unet else None
    vae, text_encoder = plans[-2][0], plans[-1][0]
    log.debug("loaded %s checkpoint %s (%s)", FAMILY_NAME[family], path, prediction)
    return Components(unet, vae, text_encoder, tokenizer, scheduler_config(params, prediction), path)


def load_vae(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, allow_pickle: bool = False,
             scaling_factor: float = SD_SCALE_FACTOR, sample_size: Optional[int] = None):
    """An ``AutoencoderKL`` from a diffusers VAE folder (config.json + weights; or a model folder's vae/), or from a
    single file in the original layout (``encoder.*``, ``decoder.*``, ``quant_conv.*``, possibly under
    ``first_stage_model.``, so a whole checkpoint's VAE too) or in diffusers' names. A file carries no latent
    scale: it gets ``scaling_factor`` (the model's); a folder keeps its config's."""
    from diffusers import AutoencoderKL

    path = Path(path).expanduser()
    if path.is_dir():
        folder = path if (path / "config.json").is_file() else path / "vae"
        if not (folder / "config.json").is_file():
            raise ModelError(f"VAE folder '{path}' has no config.json (nor vae/config.json); pass a diffusers VAE "
                             "folder (config.json + diffusion_pytorch_model.safetensors) or a VAE .safetensors file")
        if not list(folder.glob("*.safetensors")) and not allow_pickle:
            raise ModelError(f"VAE folder '{folder}' has no *.safetensors weights; convert them or pass "
                             "allow_pickle=True (--allow-pickle) if you trust the .bin file")
        try:
            return AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, use_safetensors=None if allow_pickle else True)
        except (OSError, ValueError, KeyError) as error:
            raise ModelError(f"could not load VAE folder '{folder}': {first_line(error)}") from error
    if not path.is_file():
        raise ModelError(f"VAE '{path}' does not exist; pass a diffusers VAE folder or a VAE .safetensors file")
    with Checkpoint(path, allow_pickle) as ckpt:
        keys = set(ckpt.keys)
        found = vae_layout(keys)
        if found is None:
            raise ModelError(f"'{path}' is not a VAE: it has no encoder/decoder tensors in the original "
                             "(encoder.down.N.block.M) or diffusers (encoder.down_blocks.N.resnets.M) layout")
        prefix, layout = found
        config = vae_config(path, ckpt.shape, keys, prefix, layout, scaling_factor, sample_size or 512)
        if sample_size is None:
            config.pop("sample_size")
        vae = empty(AutoencoderKL, config)
        levels = len(config["block_out_channels"])
        if layout == "original":
            name_of = lambda k: (vae_key(k, levels), None)
        else:
            old = prefix + "encoder.mid_block.attentions.0.query.weight" in keys
            name_of = lambda k: (_deprecated(k) if old else k, None)
        wanted = {prefix + name_of(k)[0] for k in vae.state_dict()}
        check_keys(ckpt, wanted, tuple(prefix + part for part in VAE_PARTS), lambda k: False, "VAE")
        load_into(vae, ckpt, prefix, name_of, dtype)
    return vae


def _deprecated(key: str) -> str:
    """diffusers' old VAE attention names (query / key / value / proj_attn), as older VAE files carry them."""
    for new, old in DEPRECATED_ATTENTION.items():
        if f".attentions.0.{new}." in key:
            return key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
    return key


def stored_dtype(model: str | os.PathLike, allow_pickle: bool = False) -> torch.dtype:
    """The dtype a model's UNet weights are stored in: a checkpoint file's ``model.diffusion_model.*`` tensors, or
    a folder's ``unet/*.safetensors`` (fp32 when unknown). ``latentdiff convert`` keeps it unless told otherwise."""
    path = Path(model).expanduser()
    files = sorted((path / "unet").glob("*.safetensors"), key=lambda f: f.name != FOLDER_WEIGHTS) if path.is_dir() \
        else [path]
    if not files:
        return torch.float32
    try:
        with Checkpoint(files[0], allow_pickle) as ckpt:
            dtypes = Counter(ckpt.dtype(k) for k in ckpt.keys if path.is_dir() or k.startswith(UNET_PREFIX))
    except ModelError:
        return torch.float32
    floating = [d for d, _ in dtypes.most_common() if d.is_floating_point]
    return floating[0] if floating else torch.float32
