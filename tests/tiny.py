"""Tiny random Stable-Diffusion-format models, saved in the diffusers layout, for tests."""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from latentdiff.models.tokenizer import build_clip_tokenizer

SD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                    clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading")


def tiny_components(prediction_type="epsilon", vae_factor=8, seed=0, context=16, sample_size=8, sd2=False,
                    inpainting=False, text_layers=2):
    """sd2=True: Stable Diffusion 2.x's layout traits (linear projections, per-block head dims, '!' padding);
    inpainting=True: a 9-channel UNet (latents, mask, masked-image latents), as SD's inpainting models;
    text_layers: the text encoder's depth (clip skip needs ≥ 3 to tell its settings apart)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=9 if inpainting else 4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2 else 8, use_linear_projection=sd2, norm_num_groups=32,
    )
    levels = {4: 3, 8: 4}[vae_factor]
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16,) * levels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=1, norm_num_groups=8, sample_size=sample_size * vae_factor, scaling_factor=0.37,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=text_layers, num_attention_heads=4,
        max_position_embeddings=context, bos_token_id=49406, eos_token_id=49407, pad_token_id=0 if sd2 else 49407,
        hidden_act="gelu" if sd2 else "quick_gelu",
    ))
    tokenizer = build_clip_tokenizer(context, pad_token="!" if sd2 else "<|endoftext|>")
    scheduler = DDIMScheduler(**SD_SCHEDULER, prediction_type=prediction_type)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_tiny(folder: Path, **kwargs) -> Path:
    tiny_components(**kwargs).save_pretrained(folder, safe_serialization=True)
    return folder


def fixed_batch_loss(model, data) -> float:
    """The training loss of the model folder ``model`` on one fixed batch of 8 images from ``data`` (CPU, fp32):
    the same numbers before and after training, to tell whether training lowered it."""
    from latentdiff.models import load_components
    from latentdiff.training.data import Transform, scan_dataset
    from latentdiff.training.inputs import TrainingInputs
    from latentdiff.training.objective import noised_batch, weighted_mse

    c = load_components(model, device="cpu")
    inputs = TrainingInputs(scan_dataset(data).items, Transform(64), c, seed=0)
    g = torch.Generator().manual_seed(123)
    latents, text = inputs.batch([(0, i) for i in range(8)], g)
    batch = noised_batch(latents, c.schedule, g)
    with torch.no_grad():
        return weighted_mse(c.unet(batch.x_t, batch.t, encoder_hidden_states=text).sample, batch.target,
                            batch.weight).item()


def tiny_sd_components(sd2=False, inpainting=False, prediction_type="epsilon", seed=0, context=16, sample_size=8,
                       text_layers=2, scaling_factor=0.18215):
    """A tiny model that keeps Stable Diffusion's conventions, so that a single-file checkpoint (which carries
    shapes only) reads back as the same model: 64 channels per text-encoder head, GroupNorm with 32 groups, UNet
    heads as SD 1.x (attention_head_dim=8) or SD 2.x (block width // 64, linear projections), pad token and
    activation of the text-encoder layout (SD 1.x: end-of-text, quick_gelu; SD 2.x: '!', gelu)."""
    torch.manual_seed(seed)
    widths = (64, 128)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=9 if inpainting else 4, out_channels=4, layers_per_block=1,
        block_out_channels=widths, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
        attention_head_dim=tuple(w // 64 for w in widths) if sd2 else 8, use_linear_projection=sd2, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, sample_size=sample_size * 8, scaling_factor=scaling_factor,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=128 if sd2 else 37, num_hidden_layers=text_layers,
        num_attention_heads=1, max_position_embeddings=context, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=0 if sd2 else 49407, hidden_act="gelu" if sd2 else "quick_gelu",
    ))
    tokenizer = build_clip_tokenizer(context, pad_token="!" if sd2 else "<|endoftext|>")
    scheduler = DDIMScheduler(**SD_SCHEDULER, prediction_type=prediction_type)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
