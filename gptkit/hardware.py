"""Which device and precision a run uses, and the autocast that applies the precision; whether
it compiles by default; the peak FLOP/s and the FLOPs a token takes, for MFU; waiting for the
device, and reading its scalars back without waiting for the whole queue."""

import functools
import re
import time
import warnings
from contextlib import ExitStack, nullcontext

import torch

from gptkit.settings import UserError


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
        return "bfloat16"  # uncompiled, a narrow model then takes float32 (cpu_auto_dtype)
    return "float32"


def cpu_has_bf16():
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


# On a CPU with native bfloat16, uncompiled, bfloat16 trains a model at least this wide faster than
# float32, and samples one at least SAMPLING wide faster (sampling reads each weight once a token,
# where the casts weigh more); below, the casts cost more than the faster matmuls save
# (benchmarks/cpu_dtype.py; docs/performance.md#dtype-auto). A rule on the model, not a stopwatch:
# the same choice every time.
CPU_BF16_MIN_WIDTH = {"training": 128, "sampling": 256}


def cpu_auto_dtype(n_embd, compiled=False, work="training"):
    """What dtype='auto' runs a model of width n_embd in on a CPU with native bfloat16, for work
    ('training' or 'sampling'): bfloat16 when compiled (its casts are fused into their neighbours)
    or at least CPU_BF16_MIN_WIDTH[work] wide, else float32. Returns (dtype, why)."""
    if compiled:
        return "bfloat16", "compiled, its casts are fused"
    least = CPU_BF16_MIN_WIDTH[work]
    if n_embd >= least:
        return "bfloat16", f"n_embd {n_embd} >= {least}: its matmuls gain more than the casts cost"
    return "float32", f"n_embd {n_embd} < {least}: the casts would cost more than the matmuls gain"


# Dense (no sparsity) tensor-core peaks in FLOP/s from the makers' data sheets, by the names
# torch.cuda.get_device_name() returns ("NVIDIA H100 80GB HBM3", "Tesla T4"). float32 means TF32
# matmuls, which a run turns on (enable_tf32; V100 and T4 have none: their plain float32, and no
# bfloat16 tensor cores). The first pattern that matches decides, so a name's longer relatives
# (H100 PCIe, L40S, A10G) come before it or are kept out by \b and $; a GPU that none matches gets
# no MFU rather than a guess.
H100_SXM = {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12}
H100_PCIE = {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}
H100_NVL = {"bfloat16": 835e12, "float16": 835e12, "float32": 418e12}
A100 = {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}  # SXM4 and PCIe alike
GPU_PEAKS = [
    (r"\bGH200\b", H100_SXM),  # Grace Hopper: an H100 (SXM) beside a Grace CPU
    (r"\bH200 NVL\b", H100_NVL),
    (r"\bH200\b", H100_SXM),
    (r"\bH100 NVL\b", H100_NVL),
    (r"\bH100 PCIe\b", H100_PCIE),
    (r"\bH100$|\bH100\b.*\b(HBM3|SXM)", H100_SXM),  # some drivers name the SXM part bare "NVIDIA H100"
    (r"\bH800 PCIe\b", H100_PCIE),  # H800: an H100 with less NVLink, the same compute
    (r"\bH800$|\bH800\b.*\b(HBM3|SXM)", H100_SXM),
    (r"\bB200\b", {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12}),  # not GB200: \b
    (r"\bA100\b", A100),
    (r"\bA800\b", A100),  # an A100 with less NVLink
    # AWS's A10G: neither NVIDIA nor AWS publishes its tensor peaks, and others' figures disagree
    # (125 as for the A10, 70 TFLOP/s): no MFU rather than a guess.
    (r"\bA10G\b", {}),
    (r"\bA10\b", {"bfloat16": 125e12, "float16": 125e12, "float32": 62.5e12}),
    (r"\bA40\b", {"bfloat16": 149.7e12, "float16": 149.7e12, "float32": 74.8e12}),
    (r"\bL40S\b", {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12}),
    (r"\bL40\b", {"bfloat16": 181e12, "float16": 181e12, "float32": 90.5e12}),
    (r"\bL4\b", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    # GeForce: FP32-accumulate figures; $ keeps out the D, Ti and Laptop parts, which differ
    (r"\bRTX 5090$", {"bfloat16": 209.5e12, "float16": 209.5e12, "float32": 104.8e12}),
    (r"\bRTX 4090$", {"bfloat16": 165e12, "float16": 165e12, "float32": 82.6e12}),
    (r"\bRTX 3090$", {"bfloat16": 71e12, "float16": 71e12, "float32": 35.6e12}),
    (r"\bV100-SXM", {"float16": 125e12, "float32": 15.7e12}),
    (r"\bV100-PCIE", {"float16": 112e12, "float32": 14e12}),
    (r"\bV100S-PCIE", {"float16": 130e12, "float32": 16.4e12}),
    (r"\bT4\b", {"float16": 65e12, "float32": 8.1e12}),
]
# GPUs whose MIG partitions have 7 compute slices: a "MIG 3g.40gb" slice gets 3/7 of the peak.
MIG_SEVEN_SLICES = r"\b(A100|A800|H100|H800|H200|GH200)\b"


def gpu_peak(name, dtype):
    """The data-sheet peak of the GPU torch names `name` in dtype, or None if unknown. A MIG slice
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb") gets its share of its GPU's peak, or None where the
    share is not known here."""
    name = name.strip()
    if re.search(r"\bMIG\b", name):
        mig = re.search(r"^(.*?) MIG (\d+)g\.\d+gb\b", name)
        if mig is None or not re.search(MIG_SEVEN_SLICES, mig.group(1)):
            return None
        peak = gpu_peak(mig.group(1), dtype)
        return None if peak is None else peak * int(mig.group(2)) / 7
    for pattern, peaks in GPU_PEAKS:
        if re.search(pattern, name):
            return peaks.get(dtype)
    return None


def flops_per_token(model):
    """{'training': (matmuls, attention), 'sampling': (...)}: FLOPs per token, as nanoGPT's MFU
    and the PaLM paper count them. A forward pass multiplies and adds once per weight N of a
    matmul (2N: the embeddings are lookups, but the tied token embedding is also the
    unembedding, a matmul), and each layer's queries meet every key of the context and its
    weights every value (4 L T C); training adds the backward pass, twice the forward."""
    c = model.config
    weights, attention = model.num_params(), 4 * c.n_layer * c.block_size * c.n_embd
    return {"training": (6 * weights, 3 * attention), "sampling": (2 * weights, attention)}


def peak_flops(device, dtype):
    """(FLOP/s, where the figure comes from) for MFU: a GPU's from GPU_PEAKS by its name, a CPU's
    measured here once (matmuls of 1024 x 1024 in dtype, on the threads torch uses); None if unknown."""
    kind = device.split(":")[0]
    if kind == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name, dtype)
        if peak is None:
            return None, f"unknown GPU ({name}, {dtype}): MFU not shown"
        return peak, f"{name}, {dtype}: {peak / 1e12:.0f} TFLOP/s (data sheet)"
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


def enable_tf32():
    """float32 matmuls and convolutions on TF32 tensor cores (Ampere and later), whose data-sheet
    peak is several times plain float32's, with a 10-bit mantissa, which training does not
    notice. What nanoGPT and PyTorch's guides do."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def autocast_context(device, dtype):
    """The one place mixed precision is switched on: weights stay float32, matmuls run in dtype.
    A context that may be entered again and again (each step enters it)."""
    if dtype == "float32":
        return nullcontext()
    return Autocast(device.split(":")[0], getattr(torch, dtype))


class Autocast:
    """torch.autocast, with torch's warning that RMSNorm of a bfloat16 input and its float32 weight
    takes the unfused kernel silenced inside it alone: that is what autocast intends, and the
    warning says nothing a user can act on. Nothing is left in the process's warning filters."""

    def __init__(self, device_type, dtype):
        self.device_type, self.dtype, self.entered = device_type, dtype, []

    def __enter__(self):
        scope = ExitStack()
        scope.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        scope.enter_context(torch.autocast(device_type=self.device_type, dtype=self.dtype))
        self.entered.append(scope)

    def __exit__(self, *exc):
        return self.entered.pop().__exit__(*exc)


def synchronize(device):
    """Wait until the device has finished the work queued on it. A GPU runs a step's kernels after
    the host has queued them, so a time read without this is the time to queue, not to compute."""
    kind = device.split(":")[0]
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def resolve_compile(compile, device):
    """compile=None (auto): on for CUDA, where torch.compile soon pays back its compiling; off
    elsewhere, where it pays for some models only (a CPU config that gains from it sets
    compile=True). Why: docs/performance.md#torchcompile."""
    return device.split(":")[0] == "cuda" if compile is None else compile


class ReadBack:
    """Scalars on the device, on their way to the host. On a GPU they are copied into pinned
    memory without waiting and an event marks the copy, so values() waits for the work that made
    them, not for everything queued since (a plain float(tensor) waits for the whole queue: the
    next step too). Elsewhere they are read as they are."""

    def __init__(self, device_type, *tensors):
        values = torch.stack([t.detach().float() for t in tensors])
        self.done = None
        if device_type == "cuda":
            self.host = torch.empty(values.shape, dtype=values.dtype).pin_memory()
            self.host.copy_(values, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record()
        else:
            self.host = values

    def values(self):
        if self.done is not None:
            self.done.synchronize()
        return self.host.tolist()
