"""Model folders and files in and out, the frozen networks, and where and in what precision they run.

    components.py        the frozen networks of one model (Components), ModelError
    folder.py            load_components (a folder, a cached hub id or a single file; the VAE swap), save a
                         diffusers-layout folder, the offline default model
    single_file.py       SD 1.x/2.x original-layout checkpoints in; single_file_save.py out; their key tables
                         (checkpoint_keys.py) and architecture from shapes (checkpoint_config.py)
    device.py            the device, dtype and mixed-precision policy ('auto' resolved in one place)
    latents.py           the VAE between images and diffusion latents
    pixels.py            uint8 images ↔ the VAE's [-1, 1] range
    tokenizer.py         the CLIP tokenizer built from open_clip's vocabulary (the default model's)
    lora.py              LoRA adapters (UNet and text encoder) for training, and fusing LoRA files into a model;
                         lora_formats.py reads and writes diffusers/peft and kohya/A1111 files
    embeddings.py        textual-inversion embeddings (diffusers and A1111 files) added to a model
"""

from .device import DEVICES, DTYPES, cpu_has_native_bf16, pick_device, pick_dtype, pick_mixed_precision
from .folder import (
                     COMPONENTS,
                     DEFAULT_MODEL,
                     Components,
                     ModelError,
                     check_model_folder,
                     freeze,
                     load_components,
                     resolve_model_path,
                     save_components,
)
from .latents import decode_latents, encode_images, scale_latents, vae_round_trip
from .pixels import to_uint8

__all__ = [
    "COMPONENTS", "DEFAULT_MODEL", "DEVICES", "DTYPES", "Components", "ModelError", "check_model_folder",
    "cpu_has_native_bf16", "decode_latents", "encode_images", "freeze", "load_components", "pick_device",
    "pick_dtype", "pick_mixed_precision", "resolve_model_path", "save_components", "scale_latents", "to_uint8",
    "vae_round_trip",
]
