"""float32 against bfloat16 on this CPU, by model width: the figures behind dtype auto's rule
(gptkit.hardware.cpu_auto_dtype: bfloat16 from CPU_BF16_MIN_WIDTH's widths, uncompiled).

    python benchmarks/cpu_dtype.py

For each width: the forward and backward of 8 sequences in float32 and under bfloat16 autocast
(uncompiled, as train.py runs them), and a sampled token's time in float32 and with the packed
bfloat16 layers sample.py uses (the median of 3 tries each). Needs a CPU with bfloat16.
"""

import statistics
import sys
import time

import torch

from gptkit.cpu import sampling_precision, use_cpu_kernels
from gptkit.hardware import CPU_BF16_MIN_WIDTH, autocast_context, cpu_has_bf16, measured_cpu_matmul_flops
from gptkit.settings import ArgumentParser, UserError, run_cli
from model import GPT, GPTConfig

SHAPES = [(64, 2, 64), (128, 4, 64), (256, 4, 256), (384, 6, 256)]  # (n_embd, n_layer, block_size)


def median_seconds(work, tries=3):
    work()  # a warm-up
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def training_step(model, x, dtype):
    def work():
        with autocast_context("cpu", dtype):
            _, loss = model(x, x)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return work


def sampling(model, idx, dtype, tokens=16):
    def work():
        with sampling_precision(model, "cpu", dtype):
            model.generate(idx, tokens)
    return lambda: median_seconds(work) / tokens


def main(argv):
    ArgumentParser(__doc__).parse_args(argv)
    if not cpu_has_bf16():
        raise UserError("this CPU has no native bfloat16 (AVX512-BF16 or AMX): dtype auto is float32 here")
    print(f"{torch.get_num_threads()} threads; matmul {measured_cpu_matmul_flops('float32') / 1e9:.0f} GFLOP/s "
          f"float32, {measured_cpu_matmul_flops('bfloat16') / 1e9:.0f} bfloat16 (1024 x 1024); "
          f"the rule takes bfloat16 from n_embd {CPU_BF16_MIN_WIDTH['training']} to train, "
          f"{CPU_BF16_MIN_WIDTH['sampling']} to sample")
    print(f"{'n_embd':>6} {'layers':>6} {'context':>7}  {'train 8 seqs, ms: float32':>25} {'bfloat16':>9}  "
          f"{'sample a token, ms: float32':>27} {'bfloat16':>9}")
    for n_embd, n_layer, block_size in SHAPES:
        torch.manual_seed(0)
        model = use_cpu_kernels(GPT(GPTConfig(block_size=block_size, vocab_size=65, n_layer=n_layer,
                                              n_head=n_layer, n_embd=n_embd)))
        x = torch.randint(0, 65, (8, block_size))
        train = {dtype: median_seconds(training_step(model, x, dtype)) for dtype in ("float32", "bfloat16")}
        model.eval()
        idx = torch.randint(0, 65, (1, 8))
        sample = {dtype: sampling(model, idx, dtype)() for dtype in ("float32", "bfloat16")}
        print(f"{n_embd:>6} {n_layer:>6} {block_size:>7}  {1000 * train['float32']:>25.1f} "
              f"{1000 * train['bfloat16']:>9.1f}  {1000 * sample['float32']:>27.2f} {1000 * sample['bfloat16']:>9.2f}",
              flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
