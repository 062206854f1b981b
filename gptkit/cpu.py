"""The CPU's fast paths, put into a model from outside when it runs on a CPU, so that
model.py stays the plain GPT. use_cpu_kernels swaps them in for training and evaluation
(dropout, attention); sampling_precision packs the Linear layers for sampling in bfloat16."""

import ctypes
import functools
import sys
from contextlib import contextmanager

import torch
import torch.nn as nn

from gptkit.attention import attention_weights
from gptkit.hardware import autocast_context
from model import CausalSelfAttention


def use_cpu_kernels(model):
    """Swap the CPU's dropout and attention into model (in place; the weights are untouched).
    Call it before wrapping the model (DDP, FSDP, torch.compile)."""
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = CPUDropout
        elif type(module) is CausalSelfAttention:
            module.__class__ = CPUCausalSelfAttention
    return model


def cpu_dropout(x, p):
    """Zero each value of x with probability p and scale the rest by 1 / (1 - p).

    torch's CPU dropout draws a random float per value, which is slow on a CPU
    (docs/performance.md#the-cpu-fast-paths). Here 16 random bits per value are drawn at once,
    and p is rounded to a multiple of 1/65536."""
    dropped = round(p * 65536)  # of the 65536 values of 16 bits, this many drop
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-2**63, None)  # 64 random bits each
    bits = words.view(torch.int16)[: x.numel()].view(x.shape)  # uniform over -32768..32767
    # x times a mask of 0 and 1 / (1 - p): one multiply forward and one backward, the mask kept
    # for it. The mask is float32, where 1 / (1 - p) is exact enough (bfloat16 would round it).
    mask = (bits >= dropped - 32768).float().mul_(65536 / (65536 - dropped))
    return (x * mask).to(x.dtype)


class CPUDropout(nn.Dropout):
    """nn.Dropout with cpu_dropout's draw."""

    def forward(self, x):
        return cpu_dropout(x, self.p) if self.training and self.p > 0 else x


class CPUCausalSelfAttention(CausalSelfAttention):
    """Attention as a CPU computes it fastest. In training with dropout, written out with
    cpu_dropout on its weights: torch's fused CPU attention cannot drop weights, and its
    fallback draws a float per weight. In compiled training, written out too: its mask and
    softmax fuse into one kernel, and the step is faster than with the fused attention. Else,
    under bfloat16 autocast, in float32: torch's CPU attention is slower in bfloat16
    (docs/performance.md#the-cpu-fast-paths)."""

    def attend(self, q, k, v, mask, is_causal):
        if self.training and self.dropout > 0:
            return cpu_dropout(attention_weights(q, k, mask, is_causal), self.dropout) @ v
        if self.training and torch.compiler.is_compiling():
            return attention_weights(q, k, mask, is_causal) @ v
        if torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().attend(q.float(), k.float(), v.float(), mask, is_causal)
        return super().attend(q, k, v, mask, is_causal)


@contextmanager
def keep_freed_memory():
    """Within it, glibc's malloc keeps the memory a step frees, for the next step to reuse. By
    default it hands freed blocks of more than ~128 KiB back to the system and faults them in
    again, zero-filled, the next time, which slows a small model's CPU step
    (docs/performance.md#the-cpu-fast-paths). On leaving, glibc's defaults are set again. Yields whether the
    setting took (False off glibc, e.g. macOS or musl)."""
    mallopt = None
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError):
            pass
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    # blocks up to 32 MiB (glibc's most) come from the heap, and the heap is never trimmed
    took = mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and \
        bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
    try:
        yield took
    finally:
        if mallopt is not None:
            mallopt(M_MMAP_THRESHOLD, 128 << 10)  # glibc's defaults
            mallopt(M_TRIM_THRESHOLD, 128 << 10)


class PackedLinear(nn.Module):
    """An nn.Linear for sampling on a CPU: the weight converted once to bfloat16 in oneDNN's
    blocked layout (the layout its matmul reads fastest), the input cast to bfloat16 and the
    output back to float32. For one token, a matmul reads each weight once, and this layout is
    the one oneDNN reads fastest (docs/performance.md#sampling-speed).

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


def sampling_precision(model, device, dtype):
    """The context to sample an eval-mode model in dtype.

    On a CPU in bfloat16, inside it every nn.Linear is replaced by a PackedLinear (an MLP's
    activation moves into its first one), and the rest (attention, the norms) runs in float32,
    which is faster there than bfloat16; on leaving it the model has its own layers again, whole
    (its state_dict and parameters as before) and able to train. Elsewhere, or where this torch
    has no oneDNN bfloat16 matmul, the context is autocast."""
    if device.split(":")[0] != "cpu" or dtype != "bfloat16" or not cpu_packs_bf16():
        return autocast_context(device, dtype)
    return packed_linears(model)


@contextmanager
def packed_linears(model):
    """model with PackedLinear layers in place of its nn.Linear ones, for the with block."""
    swaps = []  # (module, attribute, as it is, packed)
    for module in list(model.modules()):
        activation = getattr(module, "act", None)
        fuse = isinstance(activation, (nn.GELU, nn.ReLU)) and isinstance(getattr(module, "c_fc", None), nn.Linear)
        if fuse:  # an MLP: c_fc -> act -> c_proj
            swaps.append((module, "act", activation, nn.Identity()))
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                swaps.append((module, name, child, PackedLinear(child, activation if fuse and name == "c_fc" else None)))
    for module, name, _, packed in swaps:
        setattr(module, name, packed)
    try:
        yield
    finally:
        for module, name, plain, _ in swaps:
            setattr(module, name, plain)


@functools.lru_cache
def cpu_packs_bf16():
    """Whether this torch can pack and run PackedLinear (a tiny trial)."""
    try:
        PackedLinear(nn.Linear(2, 2))(torch.ones(1, 2))
        return True
    except (AttributeError, RuntimeError):
        return False
