"""`latentdiff convert SRC DST`: a model between a diffusers-layout folder and one Stable Diffusion checkpoint file."""

from __future__ import annotations

from pathlib import Path

from .common import quiet_libraries


def add_parser(sub) -> None:
    conv = sub.add_parser(
        "convert", help="convert a model between a folder and a single .safetensors file",
        description="Convert a Stable Diffusion 1.x/2.x model between a diffusers-layout folder and one checkpoint "
                    "file in the original layout (as AUTOMATIC1111 and ComfyUI use). A v-prediction model's file gets "
                    "its original config (same name, .yaml) beside it.")
    conv.add_argument("src", type=Path, metavar="SRC", help="a model folder, or a .safetensors (.ckpt) checkpoint")
    conv.add_argument("dst", type=Path, metavar="DST",
                      help="a .safetensors file to write, or a folder (written in the diffusers layout)")
    conv.add_argument("--dtype", choices=["fp16", "bf16", "fp32"],
                      help="store the weights in this dtype (default: as SRC stores its UNet)")
    conv.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                      help="the model's prediction type, when SRC does not say it right (an SD 2.x 768-v file "
                           "without its .yaml is read as epsilon)")
    conv.add_argument("--vae", type=Path, metavar="PATH", help="replace the model's VAE (a VAE folder or .safetensors)")
    conv.add_argument("--allow-pickle", action="store_true", help="read a .ckpt/.pt SRC; only for files you trust")
    conv.set_defaults(run=cmd_convert)


def cmd_convert(args) -> int:
    from ..models import ModelError, load_components, save_components
    from ..models.single_file import stored_dtype
    from ..models.single_file_save import save_single_file

    src, dst = args.src.expanduser(), args.dst.expanduser()
    if not src.exists():
        raise ModelError(f"SRC '{src}' does not exist")
    if dst.resolve() == src.resolve():
        raise ModelError(f"DST '{dst}' is SRC; write the converted model somewhere else")
    to_file = dst.suffix.lower() == ".safetensors"
    if dst.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise ModelError(f"DST '{dst}' would be a pickle; write a .safetensors file or a folder")
    if not to_file and dst.exists() and (not dst.is_dir() or (any(dst.iterdir()) and
                                                              not (dst / "model_index.json").is_file())):
        raise ModelError(f"DST '{dst}' exists and is not a model folder; choose a new folder, which is written whole")
    quiet_libraries()
    dtype = args.dtype or stored_dtype(src, args.allow_pickle)
    components = load_components(src, dtype=dtype, device="cpu", allow_pickle=args.allow_pickle, vae=args.vae,
                                 prediction_type=args.prediction_type)
    if to_file:
        save_single_file(components, dst)
    else:
        save_components(components, dst)
    size = sum(f.stat().st_size for f in ([dst] if to_file else dst.rglob("*")) if f.is_file())
    extra = " and its .yaml" if to_file and dst.with_suffix(".yaml").is_file() else ""
    print(f"wrote {dst}{extra} ({size / 2**20:.1f} MiB, {str(components.dtype).removeprefix('torch.')})")
    return 0
