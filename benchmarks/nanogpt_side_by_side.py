"""This repo's speed beside nanoGPT's, as their users run them: each side's own train.py and
sample.py as separate processes on this machine, taking turns, with the ratios.

    git clone https://github.com/karpathy/nanoGPT ../nanoGPT
    python benchmarks/nanogpt_side_by_side.py --nanogpt=../nanoGPT
    python benchmarks/nanogpt_side_by_side.py --nanogpt=../nanoGPT --only=sampling --rounds=1
    python benchmarks/nanogpt_side_by_side.py --nanogpt=../nanoGPT --ours=. --ours=../other-checkout
    python benchmarks/nanogpt_side_by_side.py --nanogpt=../nanoGPT --device=cuda

Training: nanoGPT's train.py with its README's commands (on a CPU: its CPU recipe, 0.8M, and its
Shakespeare model, 10.65M, both --device=cpu --compile=False; on a GPU: GPT-2 124M at its
bench.py shape, 12 x 1,024 tokens a step, and the 10.65M model, both compiled), and ours with
configs/shakespeare_cpu.py, configs/shakespeare.py and configs/gpt2.py, all with AdamW (the same
work a step; the CPU recipe's Muon is an optimizer choice, not a speed one). A step's time is
read from each side's own log (nanoGPT's `time ...ms` lines, our metrics.jsonl), the median of
the steps after the warm-up; start-up (imports, data, the first evaluation, compiling in the
warm-up steps) is reported apart, as the process's wall time less its timed steps. Both sides
evaluate on one batch (eval_iters=1): evaluation is not what is timed.

Sampling: each side's sample.py from the 10.65M checkpoint its own train.py just wrote,
temperature 0.8 and top-k 200 (nanoGPT's defaults), one sample. tok/s is N new tokens over the
extra wall time they take beyond a run that draws none (start-up and loading cancel out).

Each figure is the median over --rounds turns. Tiny Shakespeare comes from data/tinyshakespeare.txt;
nanoGPT prepares it with its own prepare.py, in a temporary copy of its checkout (the checkout
itself is never written to). GPT-2's data is random tokens (speed does not depend on the text).
"""

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gptkit.data import GPT2_META, write_dataset
from gptkit.hardware import measured_cpu_matmul_flops
from gptkit.runlog import read_metrics, step_seconds
from gptkit.settings import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["--log_interval=1", "--eval_iters=1"]
# name: (ours, nanoGPT's, warm-up steps, timed steps); each side's own config and flags
CPU_MODELS = {
    "0.8M (4x128, context 64, batch 12)": (
        ["configs/shakespeare_cpu.py", "--device=cpu", "--optimizer=adamw"],
        ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--block_size=64",
         "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"], 10, 40),
    "10.65M (6x384, context 256, batch 64, dropout 0.2)": (
        ["configs/shakespeare.py", "--device=cpu"],
        ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False"], 2, 4),
}
GPU_MODELS = {
    "GPT-2 124M (12x768, context 1024, batch 12)": (
        ["configs/gpt2.py", "--gradient_accumulation_steps=1", "--compile=True", "--wandb_log=False"],
        ["--gradient_accumulation_steps=1", "--wandb_log=False"], 10, 30),
    "10.65M (6x384, context 256, batch 64, dropout 0.2)": (
        ["configs/shakespeare.py", "--compile=True"], ["config/train_shakespeare_char.py"], 10, 40),
}
SAMPLED = "10.65M (6x384, context 256, batch 64, dropout 0.2)"


def nanogpt_copy(checkout, tmp):
    """A working copy of a nanoGPT checkout with its tiny Shakespeare prepared by its own script,
    and random GPT-2 tokens as its openwebtext (raw uint16, as its prepare scripts write)."""
    copy = Path(tmp) / "nanogpt"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "out*"))
    chars = copy / "data" / "shakespeare_char"
    shutil.copy(ROOT / "data" / "tinyshakespeare.txt", chars / "input.txt")
    run([sys.executable, "prepare.py"], cwd=chars)
    owt = copy / "data" / "openwebtext"
    owt.mkdir(parents=True, exist_ok=True)
    for split, size in (("train", 2_000_000), ("val", 200_000)):
        np.random.default_rng(0).integers(0, 50257, size, dtype=np.uint16).tofile(owt / f"{split}.bin")
    return copy


def our_data(tmp):
    """A data folder our train.py (of any version) prepares tiny Shakespeare in from input.txt,
    and random GPT-2 tokens for openwebtext."""
    data = Path(tmp) / "data"
    (data / "shakespeare_char").mkdir(parents=True)
    shutil.copy(ROOT / "data" / "tinyshakespeare.txt", data / "shakespeare_char" / "input.txt")
    ids = np.random.default_rng(0).integers(0, 50257, 2_200_000)
    write_dataset(data / "openwebtext", ids[:2_000_000], ids[2_000_000:], dict(GPT2_META))
    return data


def run(command, cwd):
    """Run a command; (its stdout, its wall seconds). A failure is one line naming the command."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"{' '.join(map(str, command[1:3]))} in {cwd} failed: {last}")
    return result.stdout, time.perf_counter() - started


def train_nanogpt(copy, args, warmup, steps, out):
    """nanoGPT's train.py: (seconds of each timed step, start-up seconds)."""
    total = warmup + steps
    stdout, wall = run([sys.executable, "train.py", *args, *COMMON, f"--max_iters={total}",
                        f"--eval_interval={total}", f"--out_dir={out}"], cwd=copy)
    times = {int(it): float(ms) / 1000 for it, ms in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", stdout)}
    timed = [times[it] for it in range(warmup + 1, total + 1) if it in times]
    return timed, wall - sum(timed)


def train_ours(checkout, args, warmup, steps, out, data, device):
    """Our train.py in checkout: (seconds of each timed step, start-up seconds)."""
    total = warmup + steps
    _, wall = run([sys.executable, "train.py", *args, *COMMON, f"--max_iters={total}", f"--eval_interval={total}",
                   f"--out_dir={out}", f"--data_dir={data}", "--wandb_log=False"], cwd=checkout)
    timed = [seconds for it, seconds in step_seconds(read_metrics(Path(out) / "metrics.jsonl")) if it > warmup]
    return timed, wall - sum(timed)


def sample_seconds(side, where, out, new_tokens, device):
    if side == "nanoGPT":
        command = [sys.executable, "sample.py", f"--out_dir={out}", f"--device={device}", "--num_samples=1",
                   f"--max_new_tokens={new_tokens}", "--compile=False"]
    else:
        command = [sys.executable, "sample.py", f"--out_dir={out}", f"--device={device}", "--num_samples=1",
                   f"--max_new_tokens={new_tokens}", "--temperature=0.8", "--top_k=200"]
    return run(command, cwd=where)[1]


def compare(args, tmp):
    device = "cpu" if args.device == "cpu" else args.device
    models = CPU_MODELS if device == "cpu" else GPU_MODELS
    copy, data = nanogpt_copy(args.nanogpt, tmp), our_data(tmp)
    sides = {"nanoGPT": copy, **{f"ours ({Path(o).resolve().name or o})" if len(args.ours) > 1 else "ours":
                                 Path(o).resolve() for o in args.ours}}
    for where in list(sides.values())[1:]:
        if not (where / "train.py").is_file():
            raise UserError(f"--ours={where}: no train.py there; name a checkout of this project")
    trained = {}  # side -> the out_dir of its sampled model
    for name, (ours, theirs, warmup, steps) in models.items():
        if args.only == "sampling" and name != SAMPLED:
            continue
        if args.only == "sampling":
            warmup, steps = 0, 1
        results = {side: ([], []) for side in sides}
        for turn in range(args.rounds if args.only != "sampling" else 1):
            for side, where in sides.items():
                out = Path(tmp) / f"out-{len(trained)}-{turn}-{abs(hash((side, name)))}"
                extra = [] if device == "cpu" else [f"--device={device}"]
                if side == "nanoGPT":
                    timed, startup = train_nanogpt(where, theirs + extra, warmup, steps, out)
                else:
                    timed, startup = train_ours(where, ours + extra, warmup, steps, out, data, device)
                results[side][0].append(statistics.median(timed))
                results[side][1].append(startup)
                if name == SAMPLED:
                    trained[side] = out
        if args.only != "sampling":
            base = statistics.median(results["nanoGPT"][0])
            print(f"training {name}, {steps} steps timed after {warmup}:", flush=True)
            for side, (step, startup) in results.items():
                seconds = statistics.median(step)
                ratio = "" if side == "nanoGPT" else f": {base / seconds:.2f}x nanoGPT's speed"
                print(f"  {side}: {1000 * seconds:,.1f} ms/iter (start-up {statistics.median(startup):.1f} s){ratio}",
                      flush=True)
    if args.only == "training":
        return
    for new_tokens in (255, 1000):  # within the 256-token window from a 1-token prompt; well past it
        speeds = {}
        for side, where in sides.items():
            runs = {0: [], new_tokens: []}
            for _ in range(args.rounds):
                for n in runs:
                    runs[n].append(sample_seconds("nanoGPT" if side == "nanoGPT" else "ours", where, trained[side],
                                                  n, device))
            extra = statistics.median(runs[new_tokens]) - statistics.median(runs[0])
            speeds[side] = new_tokens / extra
        print(f"sampling {new_tokens} tokens from the 10.65M model: "
              + "; ".join(f"{side} {speed:,.1f} tok/s" + ("" if side == "nanoGPT" else
                                                          f" ({speed / speeds['nanoGPT']:.2f}x)")
                          for side, speed in speeds.items()), flush=True)


def main(argv):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--nanogpt", required=True, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--ours", action="append", help="a checkout of this project (default: this one); "
                                                        "repeat to compare several")
    parser.add_argument("--rounds", type=int, default=3, help="turns each side takes; figures are medians")
    parser.add_argument("--only", choices=["training", "sampling"], help="measure only this")
    parser.add_argument("--device", default="cpu", help="cpu (the default), cuda or cuda:N")
    args = parser.parse_args(argv)
    args.ours = args.ours or [str(ROOT)]
    if args.rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {args.rounds}")
    kind = args.device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={args.device} but CUDA is not available here; use --device=cpu")
    if not all((Path(args.nanogpt) / name).is_file() for name in ("train.py", "sample.py", "model.py")):
        raise UserError(f"{args.nanogpt} is not a checkout of karpathy/nanoGPT (no train.py, sample.py and model.py "
                        "there); git clone https://github.com/karpathy/nanoGPT")
    if kind == "cpu":
        print(f"CPU, {torch.get_num_threads()} threads; matmul {measured_cpu_matmul_flops('float32') / 1e9:.0f} "
              f"GFLOP/s float32, {measured_cpu_matmul_flops('bfloat16') / 1e9:.0f} bfloat16 (1024 x 1024); "
              f"{args.rounds} round(s)", flush=True)
    else:
        print(f"{torch.cuda.get_device_name(args.device)}; {args.rounds} round(s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        compare(args, tmp)


if __name__ == "__main__":
    sys.exit(run_cli(main))
