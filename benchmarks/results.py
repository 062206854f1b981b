"""The README's results table, made by running its commands on this machine.

    python benchmarks/results.py --nanogpt=../nanoGPT     # every row; rewrites README.md's table
    python benchmarks/results.py --rows=speedrun          # some rows; prints them, README.md untouched

Each row's command runs as a user runs it, from the repo root, with its own fresh output folder,
data folder and compile cache (as on a fresh clone: tiny Shakespeare is prepared and the model
compiled within the timed command). Wall time is the whole command's; best val loss is the best
of the run's evaluations, with its bits per byte; iterations are those the run made (and chose,
under a time budget). nanoGPT's row runs nanoGPT's own train.py in a copy of the --nanogpt
checkout, its data prepared by its own prepare.py from the text that ships here.

With every row run, the table between README.md's `<!-- results` and `<!-- /results -->` lines
is replaced, with a line naming the date, the commit, the CPU, its 1024 x 1024 matmul rates and
PyTorch's version.
"""

import datetime
import importlib.util
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptkit.hardware import cpu_has_bf16, measured_cpu_matmul_flops
from gptkit.runlog import read_metrics
from gptkit.settings import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("nanogpt_side_by_side", ROOT / "benchmarks" / "nanogpt_side_by_side.py")
side_by_side = importlib.util.module_from_spec(spec)
spec.loader.exec_module(side_by_side)  # its working copy of a nanoGPT checkout, data prepared
README = ROOT / "README.md"
BEGIN, END = "<!-- results: python benchmarks/results.py --nanogpt=../nanoGPT -->", "<!-- /results -->"
NANOGPT_RECIPE = ("--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 "
                  "--n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0")
# name: (what, command as the README shows it, whose train.py runs it)
ROWS = {
    "speedrun": ("the CPU speedrun: 0.80M parameters, GPT-2's parts, Muon, compiled, bfloat16 where the CPU has it, "
                 "180 s budget", "python train.py configs/shakespeare_cpu.py", "ours"),
    "bpe": ("the same model with the newer GPT parts, on a BPE of the text's own (1,024 tokens), dropout 0.1, "
            "180 s budget", "python train.py configs/shakespeare_bpe_cpu.py", "ours"),
    "nanogpt_recipe": ("nanoGPT's CPU recipe (its README's command), this repo",
                       f"python train.py configs/shakespeare.py {NANOGPT_RECIPE} --dtype=float32", "ours"),
    "nanogpt_own": ("nanoGPT's CPU recipe, nanoGPT's own `train.py`",
                    f"python train.py config/train_shakespeare_char.py {NANOGPT_RECIPE}", "nanoGPT"),
}


def cpu_description():
    """'name (N cores; its bfloat16 matmul instructions)', from Linux's /proc/cpuinfo where there is one."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or "an unnamed CPU")
    features = ", ".join(label for flag, label in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX"))
                         if flag in info) or "no bfloat16 matmul instructions"
    return f"{name} ({os.cpu_count()} cores; {features})"


def machine_line(commit):
    rates = [f"{measured_cpu_matmul_flops('float32') / 1e9:,.0f} GFLOP/s float32"]
    if cpu_has_bf16():
        rates.append(f"{measured_cpu_matmul_flops('bfloat16') / 1e9:,.0f} bfloat16")
    return (f"`python benchmarks/results.py --nanogpt=../nanoGPT`, {datetime.date.today().isoformat()}, commit "
            f"{commit}: {cpu_description()}, 1024 x 1024 matmul on "
            f"{torch.get_num_threads()} threads {' and '.join(rates)}; PyTorch {torch.__version__.split('+')[0]}; "
            f"each command from a fresh output folder, data folder and compile cache.")


def current_commit():
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if not line.endswith("README.md")]
    return commit + (" with uncommitted changes" if changed else "")


def run_row(name, nanogpt, tmp):
    """(iterations made, those a time budget chose or None, wall seconds, best val loss, its bits
    per byte)."""
    what, command, whose = ROWS[name]
    out, cache = Path(tmp) / name / "out", Path(tmp) / name / "inductor"
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), WANDB_MODE="disabled")
    if whose == "nanoGPT":
        cwd = side_by_side.nanogpt_copy(nanogpt, Path(tmp) / name)
        extra = [f"--out_dir={out}"]
    else:
        cwd, extra = ROOT, [f"--out_dir={out}", f"--data_dir={Path(tmp) / name / 'data'}"]
    print(f"{name}: {command}", flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *command.split()[1:], *extra], cwd=cwd, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"{command} failed: {last}")
    if whose == "nanoGPT":  # its log: "step N: train loss A, val loss B"; one character is one byte here
        evals = [(int(it), float(loss)) for it, loss in re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)",
                                                                    result.stdout)]
        best = min(loss for _, loss in evals)
        iterations, bpb = max(it for it, _ in evals), best / math.log(2)
    else:
        rows = read_metrics(out / "metrics.jsonl")
        evals = [row for row in rows if "val_loss" in row]
        best_row = min(evals, key=lambda row: row["val_loss"])
        best, bpb, iterations = best_row["val_loss"], best_row.get("val_bpb"), max(row["iter"] for row in rows)
    chosen = re.search(r"time_budget [\d.]+ s: ([\d,]+) iterations", result.stdout)
    chosen = int(chosen.group(1).replace(",", "")) if chosen else None
    print(f"  {iterations:,} iterations, {wall:.1f} s, best val loss {best:.4f}", flush=True)
    return iterations, chosen, wall, best, bpb


def minutes(seconds):
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def table(results):
    lines = ["| what | command | iterations | wall time | best val loss (bits per byte) |", "|---|---|---|---|---|"]
    for name, (iterations, chosen, wall, best, bpb) in results.items():
        what, command, whose = ROWS[name]
        shown = f"in a nanoGPT checkout: `{command}`" if whose == "nanoGPT" else f"`{command}`"
        its = f"{iterations:,}" if chosen is None else f"{iterations:,} (chosen)" if iterations == chosen else \
            f"{iterations:,} of {chosen:,} chosen (the budget ran out)"
        loss = f"{best:.4f}" + (f" ({bpb:.4f})" if bpb is not None else "")
        lines.append(f"| {what} | {shown} | {its} | {minutes(wall)} | {loss} |")
    return "\n".join(lines)


def replace_table(readme_text, block):
    """readme_text with the lines between BEGIN and END replaced by block."""
    start, end = readme_text.find(BEGIN), readme_text.find(END)
    if start < 0 or end < start:
        raise UserError(f"README.md has no results table between {BEGIN} and {END}")
    return readme_text[: start + len(BEGIN)] + "\n" + block + "\n" + readme_text[end:]


def main(argv):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="the rows to run")
    parser.add_argument("--nanogpt", help="a checkout of karpathy/nanoGPT, for nanoGPT's own row")
    args = parser.parse_args(argv)
    if "nanogpt_own" in args.rows and not (args.nanogpt and (Path(args.nanogpt) / "train.py").is_file()):
        raise UserError("nanoGPT's row needs --nanogpt=PATH to a checkout: git clone "
                        "https://github.com/karpathy/nanoGPT ../nanoGPT (or leave the row out with --rows)")
    machine = machine_line(current_commit())  # the matmul rates measured before the runs
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_row(name, args.nanogpt, tmp) for name in args.rows}
    block = machine + "\n\n" + table(results)
    print(block)
    if list(results) == list(ROWS):
        README.write_text(replace_table(README.read_text(), block))
        print("README.md's results table rewritten")


if __name__ == "__main__":
    run_cli(main)
