"""Tensor names of a single-file Stable Diffusion checkpoint (the original latent-diffusion layout) ↔ diffusers'.

One function per network maps a diffusers / transformers state-dict key to the key of the same tensor in the
original layout (without its component prefix); reading and writing both use it, so the two directions cannot
drift apart. The original layout, as CompVis' latent-diffusion and Stability AI's stablediffusion repositories name
it (and as AUTOMATIC1111, ComfyUI and diffusers' ``from_single_file`` read it):

    model.diffusion_model.*      the UNet (openaimodel.UNetModel: input_blocks / middle_block / output_blocks)
    first_stage_model.*          the VAE (encoder.down.N.block.M, mid.block_1 / attn_1 / block_2, decoder.up.N…)
    cond_stage_model.transformer.text_model.*   SD 1.x: OpenAI CLIP ViT-L/14's text model, as transformers names it
    cond_stage_model.model.*     SD 2.x: an OpenCLIP text tower (transformer.resblocks.N, fused attention in_proj)
    model_ema.*                  EMA copies of the UNet weights (not read: the ``model.diffusion_model.*`` weights are)
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."  # SD 1.x text encoder
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD 2.x text encoder
EMA_PREFIX = "model_ema."
SDXL_PREFIX = "conditioner.embedders."  # SDXL's two text encoders: another architecture, named in its error

# Tensors of the original layout that the diffusers networks do not hold: read past, written as SD writes them.
CLIP_POSITION_IDS = "embeddings.position_ids"  # SD 1.x: a (1, context) int64 buffer of transformers' CLIP
OPENCLIP_UNUSED = ("text_projection", "logit_scale")  # SD 2.x: CLIP's contrastive head, unused for conditioning

RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
RESNET_VAE = {"conv_shortcut": "nin_shortcut"}  # norm1/conv1/norm2/conv2 keep their names
ATTENTION_VAE = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
VAE_TOP = {"conv_norm_out": "norm_out"}  # encoder./decoder. conv_in and conv_out keep their names
OPENCLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                "embeddings.position_embedding.weight": "positional_embedding",
                "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                  "self_attn.out_proj": "attn.out_proj"}
QKV = ("q_proj", "k_proj", "v_proj")  # the order of the three parts of OpenCLIP's fused attn.in_proj


class UnknownKey(KeyError):
    """A diffusers key that the original layout has no name for (a network that is not SD 1.x / 2.x)."""


def _rename(rest: str, table: dict[str, str]) -> str:
    """``rest`` with its leading module name replaced from ``table`` (longest match first)."""
    for ours, theirs in sorted(table.items(), key=lambda kv: -len(kv[0])):
        if rest == ours or rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    return rest


def unet_key(key: str, layers_per_block: int, up_attention: Sequence[bool]) -> str:
    """The original name of a ``UNet2DConditionModel`` tensor; ``up_attention[i]``: up block i has attentions.

    Down level b, layer j is ``input_blocks.{1 + b·(L+1) + j}`` (L layers per block, then one downsampler); up
    level u, layer j is ``output_blocks.{u·(L+1) + j}``, whose last layer also holds the upsampler after its
    attention (index 2) or its resnet (index 1)."""
    per = layers_per_block + 1
    for ours, theirs in UNET_TOP.items():
        if key.startswith(ours + "."):
            return theirs + key[len(ours):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        slot, rest = ("0", _rename(rest, RESNET_UNET)) if kind == "resnets" else ("1", rest)
        return f"input_blocks.{1 + b * per + j}.{slot}.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + layers_per_block}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename(m[2], RESNET_UNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        u, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        slot, rest = ("0", _rename(rest, RESNET_UNET)) if kind == "resnets" else ("1", rest)
        return f"output_blocks.{u * per + j}.{slot}.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        u = int(m[1])
        return f"output_blocks.{u * per + layers_per_block}.{2 if up_attention[u] else 1}.conv.{m[2]}"
    raise UnknownKey(key)


def vae_key(key: str, levels: int) -> str:
    """The original name of an ``AutoencoderKL`` tensor; decoder up block k is ``decoder.up.{levels − 1 − k}``."""
    if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if m is None:
        raise UnknownKey(key)
    side, rest = m[1], m[2]
    if rest.split(".")[0] in ("conv_in", "conv_out", "conv_norm_out"):
        return f"{side}.{_rename(rest, VAE_TOP)}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        level = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
        return f"{side}.{m[1]}.{level}.block.{m[3]}.{_rename(m[4], RESNET_VAE)}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv\.(.+)", rest):
        level = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
        return f"{side}.{m[1]}.{level}.{m[1]}sample.conv.{m[4]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", rest):
        return f"{side}.mid.block_{int(m[1]) + 1}.{_rename(m[2], RESNET_VAE)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{side}.mid.attn_1.{_rename(m[1], ATTENTION_VAE)}"
    raise UnknownKey(key)


def is_vae_attention_weight(original_key: str) -> bool:
    """The VAE's mid-block attention projections are 1×1 convolutions in the original layout, (C, C, 1, 1), and
    linear layers in diffusers, (C, C): the same numbers in another shape."""
    return re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", original_key) is not None


def clip_key(key: str) -> str:
    """SD 1.x keeps transformers' own names under ``text_model.`` (transformers ≥ 5.6 drops that level)."""
    return key


def openclip_key(key: str) -> tuple[str, Optional[int]]:
    """(original name, part) of a ``CLIPTextModel`` tensor in OpenCLIP's layout; part is 0, 1 or 2 for q, k, v,
    which OpenCLIP stores as the three row blocks of one fused ``attn.in_proj_weight`` / ``in_proj_bias``."""
    if key in OPENCLIP_TOP:
        return OPENCLIP_TOP[key], None
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m is None:
        raise UnknownKey(key)
    layer, module, kind = m[1], m[2], m[3]
    if module.startswith("self_attn.") and module.split(".")[1] in QKV:
        return f"transformer.resblocks.{layer}.attn.in_proj_{kind}", QKV.index(module.split(".")[1])
    renamed = _rename(module, OPENCLIP_LAYER)
    if renamed == module:
        raise UnknownKey(key)
    return f"transformer.resblocks.{layer}.{renamed}.{kind}", None


def openclip_block_keys(layer: int, width: int, intermediate: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of OpenCLIP resblock ``layer`` (what SD 2.x files carry for the last, unused block)."""
    shapes = {"ln_1.weight": (width,), "ln_1.bias": (width,), "attn.in_proj_weight": (3 * width, width),
              "attn.in_proj_bias": (3 * width,), "attn.out_proj.weight": (width, width),
              "attn.out_proj.bias": (width,), "ln_2.weight": (width,), "ln_2.bias": (width,),
              "mlp.c_fc.weight": (intermediate, width), "mlp.c_fc.bias": (intermediate,),
              "mlp.c_proj.weight": (width, intermediate), "mlp.c_proj.bias": (width,)}
    return {f"transformer.resblocks.{layer}.{name}": shape for name, shape in shapes.items()}
