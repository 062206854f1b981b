"""Which device and precision a run uses, and the autocast that applies the precision."""

from contextlib import nullcontext

import torch

from settings import UserError


def resolve_device(device):
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device} but CUDA is not available here; use --device=cpu (or auto)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={device} but MPS is not available here; use --device=cpu (or auto)")
    if kind not in ("cuda", "mps", "cpu"):
        raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    return device


def resolve_dtype(dtype, device):
    """'auto': bfloat16 where the hardware computes it natively (recent GPUs, CPUs with
    AVX512-BF16 or AMX), float16 on older GPUs (with a GradScaler), else float32."""
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if dtype != "auto":
        return dtype
    kind = device.split(":")[0]
    if kind == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if kind == "cpu" and torch.cpu._is_avx512_bf16_supported():
        return "bfloat16"
    return "float32"


def autocast_context(device, dtype):
    """The one place mixed precision is switched on: weights stay float32, matmuls run in dtype."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))
