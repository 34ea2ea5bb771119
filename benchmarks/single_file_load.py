"""Loading an SD-1.5-sized model from one checkpoint file vs a diffusers folder: time and peak memory.

A random model of Stable Diffusion 1.5's shapes (UNet 320/640/1280/1280 with 2 layers per block, SD's VAE, CLIP
ViT-L/14's 768 × 12 text encoder) is written in fp16 as a diffusers folder and as one original-layout .safetensors
file (in a temporary folder). Each load then runs in a fresh subprocess (median of --repeats): our single-file load,
our folder load, and diffusers' ``from_single_file(file, config=folder)``. Peak memory is the child's
``ru_maxrss``; the driver imports no torch, so the child's high-water mark starts from a small process (Linux keeps
the parent's mark across fork + exec). 'rise' is the peak minus the RSS after imports: what loading itself took.
Weights that keep the file's dtype stay memory-mapped (safetensors), resident only once read: the last column is
the RSS after every weight was read once, the model's real footprint.

    .venv/bin/python benchmarks/single_file_load.py [--repeats 3] [--dtype fp16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BUILD = r"""
import sys, torch
from pathlib import Path
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel
from latentdiff.models import load_components
from latentdiff.models.single_file_save import save_single_file
from latentdiff.models.tokenizer import build_clip_tokenizer
root = Path(sys.argv[1])
torch.manual_seed(0)
with torch.device("cpu"):
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2).half()
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512, scaling_factor=0.18215).half()
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)).half()
scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                          clip_sample=False, set_alpha_to_one=False)
StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=build_clip_tokenizer(77), unet=unet, scheduler=scheduler,
                        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                        ).save_pretrained(root / "folder", safe_serialization=True)
del unet, vae, text
save_single_file(load_components(root / "folder", dtype="fp16", device="cpu"), root / "model.safetensors")
"""

LOAD = r"""
import json, resource, sys, time
import torch, diffusers, transformers
from latentdiff.models import load_components
kind, root, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
diffusers.utils.logging.disable_progress_bar(); transformers.utils.logging.disable_progress_bar()
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
before = rss_mib()
start = time.perf_counter()
if kind == "ours: single file":
    model = load_components(root + "/model.safetensors", dtype=dtype, device="cpu")
elif kind == "ours: folder":
    model = load_components(root + "/folder", dtype=dtype, device="cpu")
else:
    model = diffusers.StableDiffusionPipeline.from_single_file(root + "/model.safetensors", config=root + "/folder",
                                                               local_files_only=True, torch_dtype=dtype)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
modules = (model.unet, model.vae, model.text_encoder)
with torch.no_grad():  # read every weight once: memory-mapped ones become resident
    for module in modules:
        for tensor in module.state_dict().values():
            tensor.sum()
resident = rss_mib()
print(json.dumps({"seconds": seconds, "peak": peak, "rise": peak - before, "resident": resident}))
"""

KINDS = ("ours: single file", "ours: folder", "diffusers: from_single_file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="the loaded weights' dtype")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        subprocess.run([sys.executable, "-c", BUILD, root], check=True, stderr=subprocess.DEVNULL)
        file = Path(root, "model.safetensors")
        folder = sum(f.stat().st_size for f in Path(root, "folder").rglob("*") if f.is_file())
        print(f"SD-1.5-sized random model, fp16: file {file.stat().st_size / 2**30:.2f} GiB, "
              f"folder {folder / 2**30:.2f} GiB; loaded as {args.dtype} on the CPU, median of {args.repeats}\n")
        print("| load | seconds | peak RSS while loading (MiB) | its rise over imports (MiB) | RSS once every weight "
              "was read (MiB) |\n|---|---:|---:|---:|---:|")
        for kind in KINDS:
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, "-c", LOAD, kind, root, args.dtype], check=True,
                                     capture_output=True, text=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"| {kind} | {med['seconds']:.1f} | {med['peak']:.0f} | {med['rise']:.0f} | {med['resident']:.0f} |")


if __name__ == "__main__":
    main()
