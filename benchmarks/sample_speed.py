"""Tokens per second when sampling, with and without the KV cache.

    python benchmarks/sample_speed.py                      # both models below, on the CPU
    python benchmarks/sample_speed.py --device=cuda --new_tokens=1000

Each model is built with random weights (speed does not depend on training); one sample,
greedy, so both paths produce the same tokens, which the script checks. Two lengths per model:
the most that fits its context (where the cache saves the most), and --new_tokens. Past the
context every step re-reads the whole window, with or without the cache (see model.py), so
long generations gain less. Beside each figure, the two limits the machine sets: a cached step
reads every weight once (the weights' bytes over the measured memory bandwidth), and an exact
step past the window runs one full-window forward (its FLOPs over the peak of hardware.py).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from gptkit.hardware import cpu_auto_dtype, flops_per_token, peak_flops, resolve_device, resolve_dtype
from gptkit.sampling import sampling_context
from gptkit.settings import load_settings, run_cli
from gptkit.train_settings import TrainConfig
from model import GPT

CONFIGS = ["configs/shakespeare.py", "configs/shakespeare_cpu.py"]  # the model shapes measured
VOCAB_SIZE = 65  # tiny Shakespeare's characters


def tokens_per_second(model, prompt, new_tokens, use_cache):
    started = time.perf_counter()
    out = model.generate(prompt, new_tokens, use_cache=use_cache)  # greedy
    if out.is_cuda:  # the host only queued the work
        torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - started), out


def memory_bandwidth(device, megabytes=256):
    """Bytes per second this device reads (a large copy reads and writes each byte once)."""
    a = torch.empty(megabytes * 2**20 // 4, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        b.copy_(a)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * a.numel() * 4 / best


def limits(model, device, dtype):
    """{read dtype: (cached tok/s limit, past-the-window tok/s limit)}: a cached step must read
    every weight once (in the dtype its matmuls read), an exact step past the window must run
    one full-window forward."""
    bandwidth = memory_bandwidth(device)
    weights = model.num_params(non_embedding=False)
    window_flops = sum(flops_per_token(model)["sampling"]) * model.config.block_size
    result = {}
    for read in {dtype, "float32"}:
        peak, _ = peak_flops(device, read)
        result[read] = bandwidth / (weights * getattr(torch, read).itemsize), peak / window_flops if peak else float("nan")
    return result


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new_tokens", type=int, default=1000)
    parser.add_argument("--prompt_tokens", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="as sample.py's: auto follows dtype auto's rule (docs/performance.md#dtype-auto)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    print(f"device {device}, dtype {dtype}, threads {torch.get_num_threads()}, "
          f"{args.prompt_tokens} prompt token(s), 1 sample")
    print(f"{'model':38} {'new tokens':>10} {'cached tok/s':>13} {'recompute tok/s':>16} {'speed-up':>9}  limits")
    root = Path(__file__).resolve().parent.parent
    for path in CONFIGS:
        settings = load_settings(TrainConfig, [str(root / path)])
        config = settings.model_config(VOCAB_SIZE)
        name = f"{Path(path).stem} ({config.n_layer}x{config.n_embd}, context {config.block_size})"
        torch.manual_seed(0)
        model = GPT(config).to(device).eval()
        prompt = torch.randint(0, config.vocab_size, (1, args.prompt_tokens), device=device)
        limit = limits(model, device, dtype)
        read_dtype = dtype  # the matmuls read their weights in this dtype (autocast's copies on a GPU)
        if device == "cpu" and dtype == "bfloat16" and args.dtype == "auto":
            read_dtype, why = cpu_auto_dtype(config.n_embd, work="sampling")  # as sample.py chooses
            if read_dtype == "float32":
                print(f"{name}: float32 ({why})")
        in_window, past_window = limit[read_dtype]
        for new_tokens in (config.block_size - args.prompt_tokens, args.new_tokens):
            with sampling_context(model, device, dtype, auto=args.dtype == "auto"):  # as sample.py
                tokens_per_second(model, prompt, 8, True)  # warm-up
                cached, out_cached = tokens_per_second(model, prompt, new_tokens, True)
                full, out_full = tokens_per_second(model, prompt, new_tokens, False)
            same = "same tokens" if torch.equal(out_cached, out_full) else "TOKENS DIFFER"
            print(f"{name:38} {new_tokens:10d} {cached:13.1f} {full:16.1f} {cached / full:8.1f}x  "
                  f"({same}; reading the weights: {in_window:,.0f} tok/s, a window forward a token at the "
                  f"{read_dtype} peak: {past_window:,.0f} tok/s)", flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
