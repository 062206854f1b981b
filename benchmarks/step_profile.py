"""Where one training step's time goes, as train.py takes it: the batch, the forward pass, the
backward pass, the gradient norm, Muon's orthogonalising, the rest of the optimizer, and what is
left (Python between them, zeroing the gradients, the non-finite guard); then, from PyTorch's
profiler, how much of the forward and backward is matrix multiplication.

    python benchmarks/step_profile.py configs/shakespeare_cpu.py
    python benchmarks/step_profile.py configs/shakespeare_cpu.py --optimizer=adamw --steps=50

Builds the config's run in this process (its data, model, precision, compiling and optimizer,
as train.py does), takes --warmup steps untimed (compiling happens there), then --steps steps
of train.py's own train_step, each part timed by a stopwatch around the function that does it;
a CPU computes as it is asked, so the stopwatch reads the work itself. Then --profiled steps
under torch.profiler: each operator's own time, grouped as matmul (mm, addmm, bmm, baddbmm, linear and
oneDNN's), fused attention, the compiled kernels (Inductor's fused elementwise code), and the
rest.
Any train.py setting can follow the config as --key=value; nothing is written but a temporary
out_dir. Compare only figures from one run on one machine.
"""

import importlib.util
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from gptkit.hardware import measured_cpu_matmul_flops
from gptkit.muon import MuonAdamW
from gptkit.settings import ArgumentParser, UserError, load_settings, run_cli
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun

# train.py's own step, loaded from the checkout as the tests load it (only model and gptkit are installed)
spec = importlib.util.spec_from_file_location("train", Path(__file__).resolve().parent.parent / "train.py")
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul",
           "mkldnn", "onednn", "aten::_weight_int8pack_mm")


class Stopwatch:
    """Seconds spent in each named part of the current step, wrapped around the functions."""

    def __init__(self):
        self.parts = defaultdict(float)
        self.steps = []

    def wrap(self, owner, name, part):
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.parts[part] += time.perf_counter() - started

        setattr(owner, name, timed)

    def step(self, seconds):
        self.steps.append({**self.parts, "total": seconds})
        self.parts.clear()


def timed_steps(run, count, stopwatch):
    for _ in range(count):
        started = time.perf_counter()
        train.train_step(run, run.config.learning_rate)
        run.iter_num += 1
        stopwatch.step(time.perf_counter() - started)


def operator_split(run, count):
    """{group: ms a step} of the operators' own time over count steps."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(count):
            train.train_step(run, run.config.learning_rate)
            run.iter_num += 1
    groups = defaultdict(float)
    for event in profile.key_averages():
        name = event.key
        if any(name.startswith(m) or m in name.lower() for m in MATMULS):
            group = "matmul"
        elif "scaled_dot_product" in name:
            group = "attention (fused)"
        elif "CompiledFxGraph" in name or "cpp_fused" in name:
            group = "compiled kernels"
        else:
            group = "other operators"
        groups[group] += event.self_cpu_time_total / 1e3 / count
    return groups


def main(argv):
    parser = ArgumentParser(__doc__)
    parser.add_argument("config", help="a config file, e.g. configs/shakespeare_cpu.py")
    parser.add_argument("--steps", type=int, default=100, help="steps timed with the stopwatch")
    parser.add_argument("--warmup", type=int, default=30, help="steps first, untimed (compiling)")
    parser.add_argument("--profiled", type=int, default=20, help="steps under torch.profiler")
    args, overrides = parser.parse_known_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.profiled < 0:
        raise UserError("--steps must be at least 1, --warmup and --profiled at least 0")
    with tempfile.TemporaryDirectory() as tmp:
        config = load_settings(TrainConfig, [args.config, *overrides, f"--out_dir={tmp}", "--time_budget=0",
                                             f"--max_iters={args.warmup + args.steps + args.profiled}",
                                             "--wandb_log=False"])
        run = TrainingRun(config)
        try:
            stopwatch = Stopwatch()
            stopwatch.wrap(run.sampler, "windows", "batch")
            stopwatch.wrap(run, "to_device", "batch")
            stopwatch.wrap(run.step_model, "forward", "forward")
            stopwatch.wrap(torch.Tensor, "backward", "backward")
            stopwatch.wrap(train, "gradient_norm", "gradient norm and clip")
            if isinstance(run.optimizer, MuonAdamW):
                stopwatch.wrap(run.optimizer, "muon_step", "Muon (momentum, Newton-Schulz, update)")
                stopwatch.wrap(run.optimizer, "adamw_step", "AdamW (embeddings, norms, biases)")
            else:
                stopwatch.wrap(run.optimizer, "step", "AdamW")
            timed_steps(run, args.warmup, Stopwatch())
            stopwatch.steps.clear()
            timed_steps(run, args.steps, stopwatch)
            split = operator_split(run, args.profiled) if args.profiled else {}
        finally:
            run.close()
    rates = {dtype: measured_cpu_matmul_flops(dtype) for dtype in ("float32", "bfloat16")}
    steps = stopwatch.steps
    parts = sorted({k for s in steps for k in s if k != "total"}, key=lambda k: -statistics.median(s.get(k, 0) for s in steps))
    total = statistics.median(s["total"] for s in steps)
    print(f"{args.config} {' '.join(overrides)}: {config.n_layer} layers x {config.n_embd}, context {config.block_size}, "
          f"batch {config.batch_size}, {run.dtype}{', compiled' if config.compile else ''}, {config.optimizer}; "
          f"{torch.get_num_threads()} threads; matmul 1024 x 1024: "
          + ", ".join(f"{rate / 1e9:,.0f} GFLOP/s {dtype}" for dtype, rate in rates.items()))
    print(f"median of {len(steps)} steps (after {args.warmup}): {total * 1e3:.1f} ms a step")
    print("| part | ms a step | share |\n|---|---|---|")
    accounted = 0.0
    for part in parts:
        ms = statistics.median(s.get(part, 0.0) for s in steps) * 1e3
        accounted += ms
        print(f"| {part} | {ms:.2f} | {ms / (total * 1e3):.0%} |")
    rest = total * 1e3 - accounted
    print(f"| the rest (Python between them, zeroing gradients, the guard) | {rest:.2f} | {rest / (total * 1e3):.0%} |")
    if split:
        whole = sum(split.values())
        print(f"\noperators' own time under torch.profiler, {args.profiled} steps ({whole:.1f} ms a step with "
              f"the profiler's overhead):")
        print("| operators | ms a step | share |\n|---|---|---|")
        for group, ms in sorted(split.items(), key=lambda g: -g[1]):
            print(f"| {group} | {ms:.2f} | {ms / whole:.0%} |")


if __name__ == "__main__":
    run_cli(main)
