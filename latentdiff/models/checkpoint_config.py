"""What the networks of a single-file checkpoint are: read from its tensor shapes, from an original-config YAML beside
it, and from Stable Diffusion's conventions for what neither carries.

Shapes tell the UNet's block widths, levels, layers per block, attention levels, input channels (4, or 9 for
inpainting), cross-attention width and projection kind (SD 2.x: linear); the VAE's widths, levels and latent
channels; the text encoder's width, depth, vocabulary, context and MLP size. They cannot tell the prediction type,
the attention heads or the latent scale. Those come from the YAML (``model.params.parameterization``,
``scale_factor``, ``linear_start``/``linear_end``/``timesteps``, ``unet_config.params.num_heads`` /
``num_head_channels``), else from the file's ``modelspec.*`` metadata, else from Stable Diffusion's conventions
(the constants below). The same constants decide when :func:`original_config` must be written beside a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from .checkpoint_keys import CLIP_PREFIX, OPENCLIP_PREFIX, UNET_PREFIX
from .components import ModelError

Shape = Callable[[str], Optional[tuple]]  # a tensor's shape by its key, None when the file lacks it

# Stable Diffusion's conventions (its v1-inference.yaml / v2-inference*.yaml, and diffusers' SD folders).
SD_SCALE_FACTOR = 0.18215  # model.params.scale_factor
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "leading"}
SD1_UNET_HEADS = 8  # SD 1.x: num_heads 8 at every level (diffusers' attention_head_dim=8)
SD2_UNET_HEAD_CHANNELS = 64  # SD 2.x: num_head_channels 64 (diffusers' attention_head_dim = width // 64)
TEXT_HEAD_CHANNELS = 64  # CLIP ViT-L/14 (768 = 12 × 64) and OpenCLIP ViT-H/14 (1024 = 16 × 64)
NORM_GROUPS = 32  # GroupNorm groups of SD's UNet and VAE
SD_RESOLUTION = 512  # pixels: SD 1.x, SD 2.x base (ε) and the inpainting models
SD2_V_RESOLUTION = 768  # pixels: SD 2.x 768-v
TEXT_ACT = {"sd1": "quick_gelu", "sd2": "gelu"}  # OpenAI CLIP vs OpenCLIP
TEXT_PAD = {"sd1": "<|endoftext|>", "sd2": "!"}  # SD 1.x pads with end-of-text; OpenCLIP with id 0 ('!')
PARAMETERIZATION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}  # LatentDiffusion's names → diffusers'
BETA_SCHEDULE = {"linear": "scaled_linear", "sqrt_linear": "linear"}  # ldm's make_beta_schedule → diffusers'
FAMILY_NAME = {"sd1": "Stable Diffusion 1.x (CLIP)", "sd2": "Stable Diffusion 2.x (OpenCLIP)"}


def count(keys, prefix: str) -> int:
    """How many numbered children ``prefix.N`` the keys have (N from 0)."""
    found = {k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)}
    return 1 + max((int(n) for n in found if n.isdigit()), default=-1)


def unet_heads(family: str, block_out_channels: list[int], unet_params: dict) -> int | list[int]:
    """diffusers' ``attention_head_dim`` (a head count, despite its name): the YAML's num_heads or
    num_head_channels when given (−1 means unset, as in LDM), else the family's convention."""
    heads, head_channels = unet_params.get("num_heads", -1), unet_params.get("num_head_channels", -1)
    if heads and heads > 0:
        return int(heads)
    if head_channels and head_channels > 0:
        return [c // int(head_channels) for c in block_out_channels]
    if family == "sd2":
        return [c // SD2_UNET_HEAD_CHANNELS for c in block_out_channels]
    return SD1_UNET_HEADS


def unet_config(path: Path, shape: Shape, keys, family: str, unet_params: dict, sample_size: int) -> dict:
    """A ``UNet2DConditionModel`` config for the ``model.diffusion_model.*`` tensors."""
    p = UNET_PREFIX
    conv_in = shape(p + "input_blocks.0.0.weight")
    if conv_in is None or shape(p + "out.2.weight") is None or shape(p + "middle_block.1.proj_in.weight") is None:
        raise ModelError(f"checkpoint '{path}' has an incomplete UNet (no input_blocks.0.0, middle_block.1 or out.2); "
                         "it is not a Stable Diffusion 1.x/2.x checkpoint")
    blocks = count(keys, p + "input_blocks.")
    levels = 1 + sum(shape(p + f"input_blocks.{i}.0.op.weight") is not None for i in range(blocks))
    per, extra = divmod(blocks, levels)  # blocks = 1 + levels·L + (levels − 1) downsamplers = levels·(L + 1)
    if extra or per < 2:
        raise ModelError(f"checkpoint '{path}': its UNet's {blocks} input blocks do not make {levels} levels of equal "
                         "depth; it is not a Stable Diffusion 1.x/2.x UNet")
    layers = per - 1
    widths = [shape(p + f"input_blocks.{1 + b * per}.0.out_layers.3.weight") for b in range(levels)]
    if None in widths:
        raise ModelError(f"checkpoint '{path}': its UNet's down blocks are not in Stable Diffusion's layout")
    widths = [w[0] for w in widths]
    down_attention = [shape(p + f"input_blocks.{1 + b * per}.1.proj_in.weight") is not None for b in range(levels)]
    up_attention = [shape(p + f"output_blocks.{u * per}.1.proj_in.weight") is not None for u in range(levels)]
    if up_attention != down_attention[::-1] or not any(down_attention):
        raise ModelError(f"checkpoint '{path}': its UNet's attention levels (down {down_attention}, up {up_attention}) "
                         "are not mirrored as in Stable Diffusion")
    first = next(p + f"input_blocks.{1 + b * per}.1." for b in range(levels) if down_attention[b])
    cross = shape(first + "transformer_blocks.0.attn2.to_k.weight")
    if cross is None:
        raise ModelError(f"checkpoint '{path}': its UNet has no cross-attention ({first}transformer_blocks.0.attn2); "
                         "it is not a Stable Diffusion 1.x/2.x text-to-image UNet")
    linear = len(shape(first + "proj_in.weight")) == 2
    config = {
        "sample_size": sample_size, "in_channels": conv_in[1], "out_channels": shape(p + "out.2.weight")[0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention],
        "block_out_channels": widths, "layers_per_block": layers, "cross_attention_dim": cross[1],
        "attention_head_dim": unet_heads(family, widths, unet_params), "use_linear_projection": linear,
        "transformer_layers_per_block": count(keys, first + "transformer_blocks."), "norm_num_groups": NORM_GROUPS,
    }
    for name, ours, theirs in (("context_dim", cross[1], unet_params.get("context_dim")),
                               ("in_channels", conv_in[1], unet_params.get("in_channels")),
                               ("use_linear_in_transformer", linear, unet_params.get("use_linear_in_transformer"))):
        if theirs is not None and theirs != ours and unet_params:
            raise ModelError(f"the original config beside '{path}' says {name}: {theirs} but the checkpoint's UNet has "
                             f"{ours}; fix or remove the .yaml")
    return config


VAE_NAMES = {  # where the VAE's shapes are, in the original layout and in diffusers'
    "original": {"down": "encoder.down.", "block": "encoder.down.{i}.block.", "attention": "encoder.mid.attn_1.q.weight",
                 "up": "decoder.up.", "up_block": "decoder.up.0.block."},
    "diffusers": {"down": "encoder.down_blocks.", "block": "encoder.down_blocks.{i}.resnets.",
                  "attention": "encoder.mid_block.attentions.0.{q}.weight", "up": "decoder.up_blocks.",
                  "up_block": "decoder.up_blocks.0.resnets."},
}


def vae_config(path: Path, shape: Shape, keys, prefix: str, layout: str, scaling_factor: float,
               sample_size: int) -> dict:
    """An ``AutoencoderKL`` config for VAE tensors under ``prefix`` in ``layout`` ('original' or 'diffusers')."""
    names = VAE_NAMES[layout]
    levels = count(keys, prefix + names["down"])
    layers = count(keys, prefix + names["block"].format(i=0))
    conv_in, conv_out, post = (shape(prefix + k) for k in ("encoder.conv_in.weight", "decoder.conv_out.weight",
                                                             "post_quant_conv.weight"))
    widths = [shape(prefix + names["block"].format(i=i) + f"{layers - 1}.conv2.weight") for i in range(levels)]
    if not levels or not layers or None in (conv_in, conv_out, post, *widths):
        raise ModelError(f"'{path}' has no complete VAE (encoder.conv_in, encoder/decoder blocks, post_quant_conv) in "
                         "Stable Diffusion's layout")
    if count(keys, prefix + names["up"]) != levels or count(keys, prefix + names["up_block"]) != layers + 1:
        raise ModelError(f"'{path}': its VAE decoder does not mirror its encoder as Stable Diffusion's does")
    attention = any(shape(prefix + names["attention"].format(q=q)) is not None for q in ("to_q", "query"))
    return {
        "in_channels": conv_in[1], "out_channels": conv_out[0], "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels, "block_out_channels": [w[0] for w in widths],
        "layers_per_block": layers, "latent_channels": post[0], "norm_num_groups": NORM_GROUPS,
        "sample_size": sample_size, "scaling_factor": scaling_factor, "mid_block_add_attention": attention,
    }


def text_config(path: Path, shape: Shape, keys, family: str) -> tuple[dict, int]:
    """(``CLIPTextConfig`` fields, resblocks the file holds). SD 2.x conditions on OpenCLIP's penultimate layer, so
    its text encoder is the file's blocks but the last (diffusers does the same), followed by ``ln_final``."""
    if family == "sd1":
        p, blocks = CLIP_PREFIX, count(keys, CLIP_PREFIX + "encoder.layers.")
        names = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
                 "encoder.layers.0.mlp.fc1.weight")
    else:
        p, blocks = OPENCLIP_PREFIX, count(keys, OPENCLIP_PREFIX + "transformer.resblocks.")
        names = ("token_embedding.weight", "positional_embedding", "transformer.resblocks.0.mlp.c_fc.weight")
    token, position, fc1 = (shape(p + n) for n in names)
    layers = blocks - (family == "sd2")
    if None in (token, position, fc1) or layers < 1:
        raise ModelError(f"checkpoint '{path}' has an incomplete {FAMILY_NAME[family]} text encoder ({p}*)")
    width = token[1]
    if width % TEXT_HEAD_CHANNELS:
        raise ModelError(f"checkpoint '{path}': its text encoder width {width} is not a multiple of "
                         f"{TEXT_HEAD_CHANNELS} channels per head, as Stable Diffusion's CLIP text encoders are")
    return {"vocab_size": token[0], "hidden_size": width, "intermediate_size": fc1[0], "num_hidden_layers": layers,
            "num_attention_heads": width // TEXT_HEAD_CHANNELS, "max_position_embeddings": position[0],
            "hidden_act": TEXT_ACT[family]}, blocks


def read_original_config(path: Path) -> dict:
    """The original (LDM) config beside a checkpoint, ``<stem>.yaml`` as AUTOMATIC1111 reads it; {} without one."""
    import yaml

    config_path = path.with_suffix(".yaml")
    if not config_path.is_file():
        return {}
    try:
        config = yaml.safe_load(config_path.read_text())
        params = config["model"]["params"]
    except (yaml.YAMLError, OSError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ModelError(f"the original config '{config_path}' is not a Stable Diffusion config with model.params "
                         f"({type(error).__name__}); fix or remove it") from None
    if not isinstance(params, dict):
        raise ModelError(f"the original config '{config_path}' has no model.params mapping; fix or remove it")
    return config


def prediction_from(params: dict, metadata: dict, given: Optional[str]) -> str:
    """The prediction type: given > the YAML's parameterization > the file's modelspec > ε (a file cannot say; SD 2.x
    768-v files need a YAML with ``parameterization: "v"`` or ``prediction_type='v_prediction'``)."""
    if given is not None:
        return given
    if "parameterization" in params:
        if params["parameterization"] not in PARAMETERIZATION:
            raise ModelError(f"original config parameterization {params['parameterization']!r} is not one of "
                             f"{', '.join(PARAMETERIZATION)}")
        return PARAMETERIZATION[params["parameterization"]]
    spec = {"v": "v_prediction", "epsilon": "epsilon"}.get(metadata.get("modelspec.prediction_type", ""))
    return spec or "epsilon"


def scheduler_config(params: dict, prediction_type: str) -> dict:
    """The DDIMScheduler config diffusers' SD folders carry, with the YAML's schedule where it has one."""
    from diffusers import DDIMScheduler

    schedule = dict(SD_SCHEDULE, prediction_type=prediction_type)
    for ours, theirs in (("num_train_timesteps", "timesteps"), ("beta_start", "linear_start"),
                         ("beta_end", "linear_end")):
        if theirs in params:
            schedule[ours] = type(SD_SCHEDULE[ours])(params[theirs])
    if "beta_schedule" in params:
        if params["beta_schedule"] not in BETA_SCHEDULE:
            raise ModelError(f"original config beta_schedule {params['beta_schedule']!r} is not supported; choose one "
                             f"of {', '.join(BETA_SCHEDULE)}")
        schedule["beta_schedule"] = BETA_SCHEDULE[params["beta_schedule"]]
    return {"_class_name": "DDIMScheduler", **DDIMScheduler(**schedule).config}


def default_resolution(family: str, prediction_type: str) -> int:
    """SD's image size: 768 for SD 2.x v-prediction (768-v), 512 otherwise."""
    return SD2_V_RESOLUTION if family == "sd2" and prediction_type == "v_prediction" else SD_RESOLUTION


def resolution_from(metadata: dict, family: str, prediction_type: str) -> int:
    """The file's ``modelspec.resolution`` ('WxH', its height), else SD's image size for the family."""
    try:
        return int(metadata["modelspec.resolution"].lower().split("x")[1])
    except (KeyError, IndexError, ValueError, AttributeError):
        return default_resolution(family, prediction_type)
