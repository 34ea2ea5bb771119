"""Write a model as one Stable Diffusion checkpoint file in the original latent-diffusion layout, and the original
config YAML beside it when the file alone would not say everything (v-prediction, a latent scale, heads or a
schedule other than SD's), so that AUTOMATIC1111, ComfyUI, diffusers' ``from_single_file`` and we read it back right.

Before writing, the file is read back on paper (its tensor shapes, YAML and metadata through the reader's own
functions): a model that a single file cannot describe (GroupNorm groups or text-encoder heads other than SD's, a
pad token other than its layout's) is refused with a one-line error instead of being written to load differently.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch

from .checkpoint_config import (
    SD_SCALE_FACTOR,
    TEXT_ACT,
    TEXT_PAD,
    prediction_from,
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
    UNET_PREFIX,
    VAE_PREFIX,
    is_vae_attention_weight,
    openclip_block_keys,
    openclip_key,
    unet_key,
    vae_key,
)
from .components import Components, ModelError
from .device import pick_dtype

log = logging.getLogger(__name__)

LDM = {  # the fixed parts of LDM's inference configs (v1-inference.yaml, v2-inference*.yaml)
    "model": "ldm.models.diffusion.ddpm.LatentDiffusion", "inpaint": "ldm.models.diffusion.ddpm.LatentInpaintDiffusion",
    "unet": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "vae": "ldm.models.autoencoder.AutoencoderKL",
    "sd1": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
    "sd2": {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
            "params": {"freeze": True, "layer": "penultimate"}},
    "vae_resolution": 256,  # ddconfig.resolution: a training crop size, unused at inference
}
MODELSPEC = {"sd1": ("stable-diffusion-v1", "https://github.com/CompVis/stable-diffusion"),
             "sd2": ("stable-diffusion-v2-512", "https://github.com/Stability-AI/stablediffusion"),
             "sd2-v": ("stable-diffusion-v2-768-v", "https://github.com/Stability-AI/stablediffusion")}
NOT_CARRIED = ("upcast_attention", "force_upcast")  # numerics switches no single file holds: read back as defaults
SCHEDULE_HARD = ("prediction_type", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
SCHEDULE_SOFT = ("timestep_spacing", "steps_offset", "clip_sample", "set_alpha_to_one", "rescale_betas_zero_snr")
CONFIG_BOOKKEEPING = ("_name_or_path", "_diffusers_version", "_class_name", "_use_default_values")


def family_of(components: Components) -> str:
    """'sd1' for a CLIP-style text encoder (quick_gelu), 'sd2' for an OpenCLIP-style one (gelu)."""
    act = components.text_encoder.config.hidden_act
    for family, family_act in TEXT_ACT.items():
        if act == family_act:
            return family
    raise ModelError(f"the text encoder's activation {act!r} is neither SD 1.x's quick_gelu nor SD 2.x's gelu; "
                     "a single-file checkpoint cannot hold it, keep this model as a folder")


def original_tensors(components: Components, family: str, dtype: Optional[torch.dtype]) -> dict[str, torch.Tensor]:
    """Every tensor of the model under its original name, on the CPU, cast to ``dtype`` (None: as they are).

    SD 2.x files carry one more OpenCLIP block than the text encoder uses (SD conditions on the penultimate layer):
    it is written as zeros (an identity block), and ``text_projection`` (unused) as the identity."""
    out: dict[str, torch.Tensor] = {}

    def put(key: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().cpu()
        out[key] = (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor).contiguous()

    unet = components.unet.config
    up_attention = [t.startswith("CrossAttn") for t in unet.up_block_types]
    for key, tensor in components.unet.state_dict().items():
        put(UNET_PREFIX + unet_key(key, unet.layers_per_block, up_attention), tensor)
    levels = len(components.vae.config.block_out_channels)
    for key, tensor in components.vae.state_dict().items():
        name = vae_key(key, levels)
        put(VAE_PREFIX + name, tensor[:, :, None, None] if is_vae_attention_weight(name) else tensor)
    text = components.text_encoder
    state = text.state_dict()
    if family == "sd1":
        for key, tensor in state.items():
            put(CLIP_PREFIX + key, tensor)
        put(CLIP_PREFIX + CLIP_POSITION_IDS, text.embeddings.position_ids)
        return out
    fused: dict[str, list] = {}
    for key, tensor in state.items():
        name, part = openclip_key(key)
        if part is None:
            put(OPENCLIP_PREFIX + name, tensor)
        else:
            fused.setdefault(name, [None] * 3)[part] = tensor
    for name, parts in fused.items():
        put(OPENCLIP_PREFIX + name, torch.cat(parts))
    width, like = text.config.hidden_size, state["embeddings.token_embedding.weight"]
    for name, shape in openclip_block_keys(text.config.num_hidden_layers, width, text.config.intermediate_size).items():
        put(OPENCLIP_PREFIX + name, torch.zeros(shape, dtype=like.dtype))
    put(OPENCLIP_PREFIX + "text_projection", torch.eye(width, dtype=like.dtype))
    return out


def original_config(components: Components, family: str) -> dict:
    """The model as an LDM inference config (what AUTOMATIC1111 reads from ``<stem>.yaml``)."""
    unet, vae, schedule = components.unet.config, components.vae.config, filled_schedule(components.scheduler_config)
    widths, vae_widths = list(unet.block_out_channels), list(vae.block_out_channels)
    heads = unet.attention_head_dim
    if isinstance(heads, int):
        head_params = {"num_heads": heads}
    elif len({w // h for w, h in zip(widths, heads)}) == 1 and all(w % h == 0 for w, h in zip(widths, heads)):
        head_params = {"num_head_channels": widths[0] // heads[0]}
    else:
        raise ModelError(f"the UNet's heads per block {list(heads)} are neither one count nor one width per head; "
                         "an original config cannot hold them, keep this model as a folder")
    if any(w % widths[0] for w in widths) or any(w % vae_widths[0] for w in vae_widths):
        raise ModelError("the UNet's or VAE's block widths are not multiples of their first, as an original config's "
                         "channel_mult needs; keep this model as a folder")
    unet_params = {
        "image_size": unet.sample_size, "in_channels": unet.in_channels, "out_channels": unet.out_channels,
        "model_channels": widths[0], "num_res_blocks": unet.layers_per_block,
        "attention_resolutions": [2 ** i for i, t in enumerate(unet.down_block_types) if t.startswith("CrossAttn")],
        "channel_mult": [w // widths[0] for w in widths], **head_params, "use_spatial_transformer": True,
        "transformer_depth": unet.transformer_layers_per_block, "context_dim": unet.cross_attention_dim,
        "use_checkpoint": False, "legacy": False}
    if unet.use_linear_projection:
        unet_params["use_linear_in_transformer"] = True
    ddconfig = {"double_z": True, "z_channels": vae.latent_channels, "resolution": LDM["vae_resolution"],
                "in_channels": vae.in_channels, "out_ch": vae.out_channels, "ch": vae_widths[0],
                "ch_mult": [w // vae_widths[0] for w in vae_widths], "num_res_blocks": vae.layers_per_block,
                "attn_resolutions": [], "dropout": 0.0}
    params = {
        "parameterization": {"v_prediction": "v", "epsilon": "eps", "sample": "x0"}[schedule["prediction_type"]],
        "linear_start": schedule["beta_start"], "linear_end": schedule["beta_end"],
        "timesteps": schedule["num_train_timesteps"], "first_stage_key": "jpg", "cond_stage_key": "txt",
        "image_size": unet.sample_size, "channels": vae.latent_channels, "cond_stage_trainable": False,
        "conditioning_key": "hybrid" if unet.in_channels > unet.out_channels else "crossattn",
        "monitor": "val/loss_simple_ema", "scale_factor": vae.scaling_factor, "use_ema": False,
        "unet_config": {"target": LDM["unet"], "params": unet_params},
        "first_stage_config": {"target": LDM["vae"], "params": {"embed_dim": vae.latent_channels, "monitor": "val/rec_loss",
                                                                "ddconfig": ddconfig,
                                                                "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": LDM[family]}
    beta_schedule = {"scaled_linear": None, "linear": "sqrt_linear"}
    if schedule.get("beta_schedule", "linear") not in beta_schedule:
        raise ModelError(f"the schedule's beta_schedule {schedule['beta_schedule']!r} has no original-config name; "
                         "keep this model as a folder")
    if beta_schedule[schedule.get("beta_schedule", "linear")]:
        params["beta_schedule"] = beta_schedule[schedule["beta_schedule"]]
    return {"model": {"target": LDM["inpaint"] if unet.in_channels > unet.out_channels else LDM["model"],
                      "params": params}}


def modelspec(components: Components, family: str, title: str) -> dict[str, str]:
    """Stability AI's ModelSpec metadata: architecture, resolution and prediction type, readable from the header."""
    v = filled_schedule(components.scheduler_config)["prediction_type"] == "v_prediction"
    size = components.unet.config.sample_size
    size = (size if isinstance(size, int) else size[0]) * 2 ** (len(components.vae.config.block_out_channels) - 1)
    architecture, implementation = MODELSPEC["sd2-v" if family == "sd2" and v else family]
    return {"format": "pt", "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture,
            "modelspec.implementation": implementation, "modelspec.title": title,
            "modelspec.resolution": f"{size}x{size}", "modelspec.prediction_type": "v" if v else "epsilon"}


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def filled_schedule(scheduler_config: dict) -> dict:
    """The scheduler config with diffusers' defaults for what it leaves out (as :class:`Schedule` reads it)."""
    from diffusers import DDIMScheduler

    return dict(DDIMScheduler.from_config(scheduler_config).config)


def _differences(ours, theirs, keys) -> list[str]:
    return [f"{k} is {_plain(ours.get(k))!r} but would read back as {_plain(theirs.get(k))!r}" for k in keys
            if _plain(ours.get(k)) != _plain(theirs.get(k))]


def read_back(components: Components, family: str, shapes: dict, params: dict, metadata: dict, path: Path) -> list[str]:
    """How the file would load differently from ``components`` (empty: the same), through the reader's functions."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from .single_file import empty

    keys, shape = set(shapes), shapes.get
    unet_params = params.get("unet_config", {}).get("params", {})
    prediction = prediction_from(params, metadata, None)
    resolution = resolution_from(metadata, family, prediction)
    try:
        vae = vae_config(path, shape, keys, VAE_PREFIX, "original", params.get("scale_factor", SD_SCALE_FACTOR),
                         resolution)
        unet = unet_config(path, shape, keys, family, unet_params, resolution // 2 ** (len(vae["block_out_channels"]) - 1))
        text, _ = text_config(path, shape, keys, family)
    except ModelError as error:  # the reader would refuse the file: say why, without the file's name
        return [str(error).split(": ", 1)[-1]]
    found = []
    for name, module, config in (("unet", components.unet, empty(UNet2DConditionModel, unet).config),
                                 ("vae", components.vae, empty(AutoencoderKL, vae).config)):
        skip = set(CONFIG_BOOKKEEPING) | set(NOT_CARRIED)
        found += [f"{name} {d}" for d in _differences(module.config, config, sorted(set(module.config) - skip))]
    text_fields = CLIPTextConfig(**text).to_dict()
    found += [f"text_encoder {d}" for d in _differences(components.text_encoder.config.to_dict(), text_fields,
                                                        [*text, "layer_norm_eps"])]
    if components.tokenizer.pad_token != TEXT_PAD[family]:
        found.append(f"tokenizer pad token is {components.tokenizer.pad_token!r} but would read back as "
                     f"{TEXT_PAD[family]!r}")
    schedule = scheduler_config(params, prediction)
    found += [f"scheduler {d}" for d in _differences(filled_schedule(components.scheduler_config), schedule,
                                                     SCHEDULE_HARD)]
    return found


def save_single_file(components: Components, path: str | os.PathLike, dtype: str | torch.dtype | None = None) -> Path:
    """Write ``components`` (a diffusers-layout SD 1.x / 2.x model) as one ``.safetensors`` file in the original
    layout, cast to ``dtype`` ('fp16', 'bf16', 'fp32'; None keeps the weights' dtypes), with ModelSpec metadata and,
    when the file alone would not say everything, the original config ``<stem>.yaml`` beside it (always for
    v-prediction; also whenever a .yaml is already there, which it replaces). Written to temporary names, then
    renamed. The schedule's sampling conventions (timestep spacing, steps offset) are SD's when read back."""
    if components.unet is None:
        raise ModelError("the model has no UNet (loaded with_unet=False); a checkpoint file needs one")
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"checkpoint file '{path}' must end in .safetensors (pickles are not written)")
    torch_dtype = None if dtype is None else pick_dtype(dtype)
    family = family_of(components)
    tensors = original_tensors(components, family, torch_dtype)
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    metadata = modelspec(components, family, path.stem)
    config = original_config(components, family)
    alone = read_back(components, family, shapes, {}, metadata, path)
    yaml_path = path.with_suffix(".yaml")
    schedule = filled_schedule(components.scheduler_config)
    with_yaml = bool(alone) or schedule["prediction_type"] != "epsilon" or yaml_path.exists()
    if alone:
        problems = read_back(components, family, shapes, config["model"]["params"], metadata, path)
        if problems:
            raise ModelError(f"a single-file checkpoint cannot hold this model: {problems[0]}; keep it as a folder")
    soft = _differences(schedule, scheduler_config({}, schedule["prediction_type"]), SCHEDULE_SOFT)
    if soft:
        log.warning("the checkpoint file does not carry the scheduler's %s; it reads back with SD's", soft[0])
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    yaml_tmp = yaml_path.with_name(f".{yaml_path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        if with_yaml:
            import yaml

            yaml_tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, path)
        if with_yaml:
            os.replace(yaml_tmp, yaml_path)
    finally:
        for leftover in (tmp, yaml_tmp):
            leftover.unlink(missing_ok=True)
    return path
