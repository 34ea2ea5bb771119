"""Stage 2: a small open_clip CLIP trained contrastively on image–caption pairs; its text tower becomes the
frozen text encoder of the diffusion model, exported as a transformers ``CLIPTextModel`` + ``CLIPTokenizer``.

Model, loss and tokenizer are open_clip's own: ``open_clip.CLIP(**config)`` (what ``open_clip.create_model``
builds from a registered config), ``open_clip.ClipLoss`` (InfoNCE both ways, Radford et al. 2021) and
``open_clip.SimpleTokenizer`` with the bundled BPE. A trained model is saved as an open_clip local folder
(``open_clip_config.json`` + ``open_clip_model.safetensors``) that ``open_clip.create_model("local-dir:…")`` loads.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..models.device import make_accelerator
from ..models.pixels import as_uint8_images, to_pixels
from .lr import warmup_cosine

log = logging.getLogger(__name__)

IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)  # images enter the vision tower in [-1, 1], like the VAE's
BOS_ID, EOS_ID, PAD_ID = 49406, 49407, 0  # open_clip's tokenizer pads with 0, the id of "!"
OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"


def clip_config(
    *,
    embed_dim: int = 128,
    image_size: int = 64,
    patch_size: int = 8,
    vision_width: int = 128,
    vision_layers: int = 4,
    text_width: int = 128,
    text_layers: int = 4,
    heads: int = 4,
    context_length: int = 32,
) -> dict:
    """An open_clip model config (as in ``open_clip/model_configs/*.json``): a small ViT, a causal text transformer."""
    if vision_width % heads or text_width % heads:
        raise ValueError(f"heads={heads} must divide vision_width={vision_width} and text_width={text_width}")
    return {
        "embed_dim": embed_dim,
        "quick_gelu": False,  # nn.GELU (exact), hidden_act "gelu" in transformers
        "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": vision_width,
                       "layers": vision_layers, "head_width": vision_width // heads},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                     "heads": heads, "layers": text_layers},
    }


def create_clip(config: dict):
    """A randomly initialised ``open_clip.CLIP`` from a config dict, with its preprocessing recorded."""
    import open_clip

    model = open_clip.CLIP(**json.loads(json.dumps(config)))  # a deep copy; open_clip reads nested dicts
    open_clip.set_model_preprocess_cfg(model, {"size": config["vision_cfg"]["image_size"], "mean": IMAGE_MEAN,
                                               "std": IMAGE_STD, "interpolation": "bicubic", "resize_mode": "shortest"})
    return model


def tokenizer_for(model):
    """open_clip's tokenizer (bundled BPE, zero padding) at the model's context length."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=model.context_length)


def tokenize_captions(model, captions: Sequence[str]) -> torch.Tensor:
    """Token ids (N, context_length); raises a ValueError naming a caption that does not fit."""
    tokenizer = tokenizer_for(model)
    limit = model.context_length
    for caption in dict.fromkeys(captions):
        n = len(tokenizer.encode(caption)) + 2  # + start and end of text
        if n > limit:
            raise ValueError(f"caption {caption!r} has {n} tokens but the text context is {limit}; "
                             "shorten it or build the model with a larger context_length")
    return tokenizer(list(captions))


def train_clip(
    images,
    captions: Sequence[str],
    *,
    config: Optional[dict] = None,
    steps: int = 10_000,
    batch_size: int = 256,
    lr: float = 5e-4,
    weight_decay: float = 0.1,
    warmup: int = 200,
    seed: int = 0,
    device: str = "auto",
    mixed_precision: str = "auto",
    log_every: int = 500,
    progress: bool = False,
    callback: Optional[Callable[[dict], None]] = None,
):
    """Train a CLIP on uint8 images (N, H, W, 3) and their N captions; returns the open_clip model in eval mode.

    AdamW (no decay on gains, biases, embeddings' positions and the logit scale, as open_clip's trainer), linear
    warmup and cosine decay, gradients clipped to norm 1, logit scale clamped at ln 100. No augmentation: flips
    or crops would contradict captions that name positions. ``callback`` gets ``{"step", "loss", "logit_scale",
    "lr"}`` after every step. Same seed, same device → same weights.
    """
    import open_clip
    from accelerate.utils import set_seed

    images = as_uint8_images(images)
    if len(captions) != len(images):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions; pass one caption per image")
    if steps < 0 or batch_size < 2:
        raise ValueError(f"steps must be ≥ 0 and batch_size ≥ 2, got steps={steps}, batch_size={batch_size}")
    accelerator = make_accelerator(device, mixed_precision)
    set_seed(seed)
    model = create_clip(config or clip_config(image_size=images.shape[1]))
    tokens = tokenize_captions(model, captions)  # (N, L)
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "positional_embedding" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "positional_embedding" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_fn = open_clip.ClipLoss(rank=accelerator.process_index, world_size=accelerator.num_processes)
    data, tokens = images.to(accelerator.device), tokens.to(accelerator.device)
    batches = torch.Generator().manual_seed(seed + accelerator.process_index)

    model.train()
    for step in tqdm(range(steps), disable=not progress or not accelerator.is_local_main_process, desc="clip"):
        # 1. a random batch of distinct pairs
        idx = torch.randperm(len(data), generator=batches)[:batch_size].to(data.device)
        factor = warmup_cosine(step, steps, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        # 2. contrastive loss over the batch's image and text features and step
        with accelerator.autocast():
            image_features, text_features, logit_scale = model(to_pixels(data[idx]), tokens[idx])
            loss = loss_fn(image_features, text_features, logit_scale)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            accelerator.unwrap_model(model).logit_scale.clamp_(0, math.log(100))
        logs = {"step": step + 1, "loss": loss.item(), "logit_scale": logit_scale.item(), "lr": lr * factor}
        if callback is not None:
            callback(logs)
        if log_every and (step + 1) % log_every == 0:
            log.info("clip step %d/%d: loss %.4f  logit scale %.1f", step + 1, steps, logs["loss"],
                     logs["logit_scale"])
    model = accelerator.unwrap_model(model)
    accelerator.free_memory()
    return model.float().eval()


@torch.no_grad()
def _features(model, images: torch.Tensor, tokens: torch.Tensor, batch_size: int):
    device = model.logit_scale.device
    image_features = torch.cat([model.encode_image(to_pixels(images[i : i + batch_size].to(device)), normalize=True)
                                for i in range(0, len(images), batch_size)])
    text_features = torch.cat([model.encode_text(tokens[i : i + batch_size].to(device), normalize=True)
                               for i in range(0, len(tokens), batch_size)])
    return image_features, text_features  # (N, E), (N, E), unit norm


def retrieval_top1(model, images, captions: Sequence[str], *, match: str = "caption", batch_size: int = 256) -> float:
    """Text → image top-1 accuracy: the fraction of captions whose most similar image (of all N) is a right one.

    ``match="caption"`` counts every image whose caption is identical to the query as right (datasets repeat
    captions); ``match="index"`` counts only the caption's own image. Neither credits an image whose different
    caption also fits (a caption that omits attributes fits several).
    """
    if match not in ("caption", "index"):
        raise ValueError(f"match={match!r} is not supported; choose 'caption' or 'index'")
    images = as_uint8_images(images)
    if len(captions) != len(images):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions; pass one caption per image")
    model.eval()
    image_features, text_features = _features(model, images, tokenize_captions(model, captions), batch_size)
    best = (text_features @ image_features.T).argmax(dim=1).cpu()  # (N,) image index per caption
    if match == "index":
        return (best == torch.arange(len(captions))).float().mean().item()
    return sum(captions[j] == c for j, c in zip(best.tolist(), captions)) / len(captions)


def save_clip(model, config: dict, folder: str | os.PathLike) -> Path:
    """Write an open_clip local folder (config + safetensors weights) that ``load_clip`` and open_clip load."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = dict(model.visual.preprocess_cfg)
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, folder / OPEN_CLIP_WEIGHTS)
    return folder


def load_clip(folder: str | os.PathLike, device: str = "cpu"):
    """The CLIP of a folder written by ``save_clip``, via ``open_clip.create_model('local-dir:…')``, in eval mode."""
    import open_clip

    if not (Path(folder) / OPEN_CLIP_WEIGHTS).is_file():
        raise FileNotFoundError(f"'{folder}' has no {OPEN_CLIP_WEIGHTS}; pass a folder written by save_clip")
    return open_clip.create_model(f"local-dir:{Path(folder).resolve()}", device=device).eval()


def text_encoder_config(model):
    """The transformers ``CLIPTextConfig`` equal to an open_clip CLIP's text tower; raises for unsupported towers."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock
    from transformers import CLIPTextConfig

    blocks = model.transformer.resblocks
    block = blocks[0]
    if not all(type(b) is ResidualAttentionBlock and isinstance(b.ls_1, torch.nn.Identity) for b in blocks):
        raise ValueError("only open_clip's default text blocks (no layer scale or custom attention) can be exported")
    if model.attn_mask is None or getattr(model, "text_pool_type", "argmax") != "argmax":
        raise ValueError("only causal, argmax-pooled open_clip text towers can be exported as a CLIPTextModel")
    act = block.mlp.gelu
    if isinstance(act, QuickGELU):
        hidden_act = "quick_gelu"
    elif isinstance(act, torch.nn.GELU) and act.approximate == "none":
        hidden_act = "gelu"
    else:
        raise ValueError(f"text tower activation {act!r} has no transformers equivalent here")
    width = model.transformer.width
    projection = model.text_projection
    return CLIPTextConfig(
        vocab_size=model.vocab_size, hidden_size=width, intermediate_size=block.mlp.c_fc.out_features,
        num_hidden_layers=len(blocks), num_attention_heads=block.attn.num_heads,
        max_position_embeddings=model.context_length, hidden_act=hidden_act, layer_norm_eps=model.ln_final.eps,
        projection_dim=projection.shape[1] if projection is not None else width,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )


def text_encoder_state_dict(model) -> dict[str, torch.Tensor]:
    """open_clip text-tower weights under transformers ``CLIPTextModel`` names (without the ``text_model.`` prefix)."""
    out = {
        "embeddings.token_embedding.weight": model.token_embedding.weight,
        "embeddings.position_embedding.weight": model.positional_embedding,
        "final_layer_norm.weight": model.ln_final.weight,
        "final_layer_norm.bias": model.ln_final.bias,
    }
    for i, block in enumerate(model.transformer.resblocks):
        hf = f"encoder.layers.{i}."
        q, k, v = block.attn.in_proj_weight.chunk(3)  # (3·W, W) → three (W, W), in q, k, v order
        qb, kb, vb = block.attn.in_proj_bias.chunk(3)
        out |= {
            hf + "self_attn.q_proj.weight": q, hf + "self_attn.q_proj.bias": qb,
            hf + "self_attn.k_proj.weight": k, hf + "self_attn.k_proj.bias": kb,
            hf + "self_attn.v_proj.weight": v, hf + "self_attn.v_proj.bias": vb,
            hf + "self_attn.out_proj.weight": block.attn.out_proj.weight,
            hf + "self_attn.out_proj.bias": block.attn.out_proj.bias,
            hf + "layer_norm1.weight": block.ln_1.weight, hf + "layer_norm1.bias": block.ln_1.bias,
            hf + "layer_norm2.weight": block.ln_2.weight, hf + "layer_norm2.bias": block.ln_2.bias,
            hf + "mlp.fc1.weight": block.mlp.c_fc.weight, hf + "mlp.fc1.bias": block.mlp.c_fc.bias,
            hf + "mlp.fc2.weight": block.mlp.c_proj.weight, hf + "mlp.fc2.bias": block.mlp.c_proj.bias,
        }
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


def to_text_encoder(model):
    """A transformers ``CLIPTextModel`` whose last_hidden_state equals the open_clip text tower's tokens after
    ln_final (before pooling and projection), in eval mode on the CPU."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel(text_encoder_config(model))
    missing, unexpected = encoder.load_state_dict(text_encoder_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"text tower conversion does not cover CLIPTextModel: missing {missing}, "
                           f"unexpected {unexpected}")
    return encoder.eval()


def export_text_encoder(model, folder: str | os.PathLike) -> Path:
    """Write ``folder/text_encoder/`` (CLIPTextModel, safetensors) and ``folder/tokenizer/`` (CLIPTokenizer).

    The two subfolders are the diffusers layout's, so ``folder`` can be (or become) a model folder. Weight names
    carry the ``text_model.`` prefix that transformers 4.x expects and 5.x also reads; the tokenizer folder also
    holds ``vocab.json``/``merges.txt`` for 4.x's slow tokenizer. The tokenizer pads with "!" (id 0) as open_clip
    does — as Stable Diffusion 2 does — so padding positions get the embeddings the CLIP was trained with. The
    price, as in SD 2: "!" in a prompt becomes the pad token in transformers, while open_clip merges it by BPE.
    """
    from safetensors.torch import save_file

    from ..models.tokenizer import build_clip_tokenizer, clip_vocabulary

    folder = Path(folder)
    encoder = to_text_encoder(model)
    (folder / "text_encoder").mkdir(parents=True, exist_ok=True)
    encoder.config.architectures = ["CLIPTextModel"]
    encoder.config.save_pretrained(folder / "text_encoder")
    weights = {"text_model." + k: v for k, v in text_encoder_state_dict(model).items()}
    save_file(weights, folder / "text_encoder" / "model.safetensors", metadata={"format": "pt"})
    tokenizer = build_clip_tokenizer(model.context_length, pad_token="!")
    tokenizer.save_pretrained(folder / "tokenizer")
    vocab, merges = clip_vocabulary()
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder
