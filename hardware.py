"""Which device and precision a run uses, and the autocast that applies the precision."""

import ctypes
import functools
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn

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
    if kind == "cuda":  # V100 and T4 emulate bfloat16, slowly: float16 (with a GradScaler) there
        return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
    if kind == "cpu" and cpu_has_bf16():
        return "bfloat16"  # train.py then measures whether it is faster for the model at hand
    return "float32"


def cpu_has_bf16():
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def fastest_cpu_dtype(model, x, y, dtypes=("float32", "bfloat16")):
    """The dtype in which model's forward and backward on (x, y) take least time, measured here:
    bfloat16 autocast speeds up large matmuls, but on a small model its casts cost more than it
    saves; float32 is kept unless another is at least 10% faster. Returns (dtype, {dtype: seconds}).
    The model is measured as it is (dropout included); its gradients are left as they were
    (none), and torch's random numbers too."""
    seconds = {}
    with torch.random.fork_rng(devices=[]):  # dropout's draws here leave the run's own untouched
        for dtype in dtypes:
            times = []
            for _ in range(4):  # the first is a warm-up
                started = time.perf_counter()
                with autocast_context("cpu", dtype):
                    _, loss = model(x, y)
                loss.backward()
                times.append(time.perf_counter() - started)
            seconds[dtype] = sorted(times[1:])[1]
            model.zero_grad(set_to_none=True)
    # float32 unless bfloat16 is clearly faster: a close call would flip from run to run
    fastest = min(seconds, key=seconds.get)
    return (fastest if seconds[fastest] < 0.9 * seconds["float32"] else "float32"), seconds


# Dense (no sparsity) tensor-core peaks in FLOP/s, from the makers' data sheets; float32 means
# TF32 matmuls, which train.py turns on. The most specific name comes first.
GPU_PEAKS = [
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12}),
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("L40S", {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12}),
    ("L4", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    ("RTX 4090", {"bfloat16": 165e12, "float16": 165e12, "float32": 82.6e12}),
    ("RTX 3090", {"bfloat16": 71e12, "float16": 71e12, "float32": 35.6e12}),
    ("V100", {"float16": 125e12, "float32": 15.7e12}),
    ("T4", {"float16": 65e12, "float32": 8.1e12}),
]


def peak_flops(device, dtype):
    """(FLOP/s, where the figure comes from) for MFU: a GPU's from GPU_PEAKS by its name, a CPU's
    measured here once (matmuls of 1024 x 1024 in dtype, on the threads torch uses); None if unknown."""
    kind = device.split(":")[0]
    if kind == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS:
            if key in name and dtype in peaks:
                return peaks[dtype], f"{name}, {dtype}: {peaks[dtype] / 1e12:.0f} TFLOP/s (data sheet)"
        return None, f"{name} is not in hardware.py's GPU_PEAKS"
    if kind == "cpu":
        flops = measured_cpu_matmul_flops(dtype)
        return flops, f"CPU, {dtype}, {torch.get_num_threads()} threads: {flops / 1e9:.0f} GFLOP/s (measured matmul)"
    return None, f"no peak known for {device}"


@functools.lru_cache
def measured_cpu_matmul_flops(dtype, n=1024):
    a = torch.full((n, n), 0.5, dtype=getattr(torch, dtype))  # not randn: the run's random numbers stay its own
    b = torch.full((n, n), 0.25, dtype=getattr(torch, dtype))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(10):  # the best of 10: a busy moment on a shared machine would lower the peak
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def keep_freed_memory():
    """Have glibc's malloc keep the memory a step frees, for the next step to reuse. By default
    it hands freed blocks of more than ~128 KiB back to the system and faults them in again,
    zero-filled, the next time. On a 2-core CPU that made the 0.8M model's training step 15%
    slower with AdamW (25.3 against 21.6 ms/iter) and 12% with Muon (35.7 against 31.5).
    Returns whether the setting took (False off glibc, e.g. macOS or musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    # blocks up to 32 MiB (glibc's most) come from the heap, and the heap is never trimmed
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def enable_tf32():
    """float32 matmuls and convolutions on TF32 tensor cores (Ampere and later): ~8x faster, with
    a 10-bit mantissa, which training does not notice. What nanoGPT and PyTorch's guides do."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def autocast_context(device, dtype):
    """The one place mixed precision is switched on: weights stay float32, matmuls run in dtype."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


class PackedLinear(nn.Module):
    """An nn.Linear for sampling on a CPU: the weight converted once to bfloat16 in oneDNN's
    blocked layout (the layout its matmul reads fastest), the input cast to bfloat16 and the
    output back to float32. For one token, a matmul reads each weight once, and from this layout
    it takes about half the time of autocast's bfloat16 matmul.

    activation (an nn.GELU or nn.ReLU) is applied inside the matmul, and the output then stays
    in bfloat16: it is an MLP's hidden layer, read only by the next PackedLinear."""

    def __init__(self, linear, activation=None):
        super().__init__()
        weight = linear.weight.detach().to(torch.bfloat16)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)  # laid out for one row at a time
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.fused = ("none", "")
        if isinstance(activation, nn.GELU):
            self.fused = ("gelu", activation.approximate)  # 'none' (the exact form) or 'tanh'
        elif isinstance(activation, nn.ReLU):
            self.fused = ("relu", "")

    def forward(self, x):
        attr, algorithm = self.fused
        # .default: the overload named, not looked up among the op's overloads at every call
        y = torch.ops.mkldnn._linear_pointwise.default(x.to(torch.bfloat16), self.packed, self.bias, attr, [None],
                                                       algorithm)
        return y if attr != "none" else y.float()


def sampling_precision(model, device, dtype, trial=None):
    """Ready an eval-mode model to sample in dtype; returns the context to run it in.

    On a CPU in bfloat16 every nn.Linear is replaced, in place, by a PackedLinear (an MLP's
    activation moves into its first one), and the rest (attention, LayerNorm) runs in float32,
    which is faster there than bfloat16: the model can then sample but no longer train. With
    trial (a function that samples a few tokens), float32 is kept instead where trial runs
    faster in it, as on a small model, whose weights are read fast enough that the casts cost
    more than bfloat16 saves. Elsewhere, or where this torch has no oneDNN bfloat16 matmul, the
    context is autocast."""
    if device.split(":")[0] != "cpu" or dtype != "bfloat16" or not cpu_packs_bf16():
        return autocast_context(device, dtype)
    swaps = []  # (module, attribute, as it is, packed)
    for module in list(model.modules()):
        activation = getattr(module, "act", None)
        fuse = isinstance(activation, (nn.GELU, nn.ReLU)) and isinstance(getattr(module, "c_fc", None), nn.Linear)
        if fuse:  # an MLP: c_fc -> act -> c_proj
            swaps.append((module, "act", activation, nn.Identity()))
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                swaps.append((module, name, child, PackedLinear(child, activation if fuse and name == "c_fc" else None)))

    def pack(packed):
        for module, name, plain, packed_module in swaps:
            setattr(module, name, packed_module if packed else plain)

    if trial is not None:
        seconds = {}
        for packed in (True, False):
            pack(packed)
            trial()  # a warm-up
            started = time.perf_counter()
            trial()
            seconds[packed] = time.perf_counter() - started
        if seconds[False] < seconds[True]:
            return nullcontext()  # float32 throughout: the model keeps its own layers
    pack(True)
    return nullcontext()


@functools.lru_cache
def cpu_packs_bf16():
    """Whether this torch can pack and run PackedLinear (a tiny trial)."""
    try:
        PackedLinear(nn.Linear(2, 2))(torch.ones(1, 2))
        return True
    except (AttributeError, RuntimeError):
        return False
