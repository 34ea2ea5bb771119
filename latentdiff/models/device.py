"""Where and in what precision models run: the one device, dtype and mixed-precision policy.

- device 'auto': CUDA when available, else the CPU;
- dtype 'auto' (inference weights): fp16 on CUDA, as Stable Diffusion is usually run; fp32 elsewhere;
- mixed precision 'auto' (training): bf16 where the hardware computes it (Ampere+ GPUs, CPUs with AVX512-BF16 /
  AMX / Arm BF16), fp16 on older GPUs, else no (fp32). Emulated bf16 on a CPU without it runs a UNet step many
  times slower than fp32, so 'auto' never picks it there.
"""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


def pick_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not supported; choose one of {', '.join(map(repr, DEVICES))}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(device)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX, Arm's BF16 extension), read from
    /proc/cpuinfo. Without it PyTorch emulates bf16 and a bf16 UNet step runs several times slower than fp32."""
    try:
        with open(cpuinfo) as f:
            flags = {w for line in f if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def pick_mixed_precision(choice: str, device: torch.device) -> str:
    """Accelerate's mixed_precision for ``choice``; 'auto' is bf16 where the hardware computes it (Ampere+ GPUs,
    CPUs with native bf16), fp16 on older GPUs, else no (fp32)."""
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


def pick_dtype(dtype: str | torch.dtype = "fp32", device: torch.device | None = None) -> torch.dtype:
    """'auto' is fp16 on a CUDA device (as Stable Diffusion is usually run), fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device is not None and device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        choices = ", ".join(map(repr, ("auto", *DTYPES)))
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {choices}")
    return DTYPES[dtype]


def check_mixed_precision(name: str, choice: str) -> None:
    """ValueError naming the setting unless ``choice`` is a mixed precision we know, usable on this machine."""
    if choice not in MIXED_PRECISIONS:
        raise ValueError(f"{name}={choice!r} is not supported; choose one of {', '.join(map(repr, MIXED_PRECISIONS))}")
    if choice == "fp16" and not torch.cuda.is_available():
        raise ValueError(f"{name}=fp16 needs a CUDA GPU; use bf16 (works on CPU) or no")


def make_accelerator(device: str = "auto", mixed_precision: str = "auto", **kwargs):
    """An ``accelerate.Accelerator`` on ``device`` with ``mixed_precision`` resolved by :func:`pick_mixed_precision`.

    ``cpu=True`` without CUDA makes processes started by torchrun / ``accelerate launch --multi_gpu`` join as
    MULTI_CPU. ``kwargs`` go to the Accelerator (gradient accumulation, trackers, project folders)."""
    from accelerate import Accelerator

    check_mixed_precision("mixed_precision", mixed_precision)
    chosen = pick_device(device)
    return Accelerator(cpu=chosen.type == "cpu", mixed_precision=pick_mixed_precision(mixed_precision, chosen),
                       **kwargs)
