"""Does a newer GPT part help? Trains a config with each part alone, and with combinations, over
several seeds, with the learning rate re-tuned for each row, and prints the table of best val losses.

    python benchmarks/options_table.py configs/shakespeare_cpu.py --out_dir=options-cpu
    python benchmarks/options_table.py configs/shakespeare.py --parallel=9 --out_dir=options-gpu   # one GPU
    python benchmarks/options_table.py configs/shakespeare_cpu.py --rows gpt2 rope rope+relu2 --seeds 1337

A row is `gpt2` (GPT-2's parts), one newer part (rope, rmsnorm, qk_norm, relu2, swiglu, untied,
softcap), `newer` (all of them but swiglu, which replaces relu2), or parts joined with `+`. For each
row, every --learning_rates value is tried on the first seed; the best of them is then run on
every seed (min_lr keeps the config's ratio to the learning rate). Each run is `python train.py
CONFIG configs/gpt2_parts.py FLAGS --seed=S --out_dir=...` (so every row starts from GPT-2's parts,
whatever the config sets) in its own process, --parallel of them at a time (1 on a CPU: its cores
are shared; several small models fit on one GPU together, which slows each). Runs already in
--out_dir are not run again, so an interrupted table goes on where it stopped. Any
train.py setting can follow the config as --key=value and applies to every run. Under a config's
time_budget each run chooses its own steps for the machine as it is at that moment, and the table
names them; --max_iters=N compares every row at the same steps.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gptkit.files import atomic_write
from gptkit.runlog import read_metrics
from gptkit.settings import ArgumentParser, UserError, load_settings, run_cli
from gptkit.train_settings import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
GPT2_PARTS = os.path.relpath(ROOT / "configs" / "gpt2_parts.py")  # every row starts from GPT-2's parts
PARTS = {
    "rope": "--pos_encoding=rope",
    "rmsnorm": "--norm=rmsnorm",
    "qk_norm": "--qk_norm=True",
    "relu2": "--activation=relu2",
    "swiglu": "--activation=swiglu",
    "untied": "--tie_embeddings=False",
    "softcap": "--logit_softcap=15.0",
}
NEWER = ["rope", "rmsnorm", "qk_norm", "relu2", "untied", "softcap"]


def row_flags(row):
    """The train.py flags of a row: 'gpt2', a part, 'newer', or parts joined with '+'."""
    if row == "gpt2":
        return []
    parts = NEWER if row == "newer" else row.split("+")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"unknown row part {unknown[0]!r} in {row!r}: rows are gpt2, newer, or parts joined with "
                        f"'+' from {', '.join(PARTS)}")
    if "relu2" in parts and "swiglu" in parts:
        raise UserError(f"row {row!r} sets the activation twice: relu2 and swiglu are two choices of one setting")
    return [PARTS[p] for p in parts]


def best_val_loss(out_dir):
    losses = [r["val_loss"] for r in read_metrics(Path(out_dir) / "metrics.jsonl") if r.get("val_loss") is not None]
    return min(losses) if losses else None


def iterations(out_dir):
    """The steps a run took (its last row's iteration): a time_budget chooses them."""
    return max((r["iter"] for r in read_metrics(Path(out_dir) / "metrics.jsonl")), default=0)


class Table:
    """The runs of the table, kept in out_dir/results.json as each one ends."""

    def __init__(self, config, overrides, out_dir, settings):
        self.config, self.overrides, self.out_dir = config, overrides, Path(out_dir)
        self.settings = settings
        self.file = self.out_dir / "results.json"
        self.results = json.loads(self.file.read_text()) if self.file.exists() else {}
        self.lock = threading.Lock()  # --parallel runs end in their own threads

    def key(self, row, lr, seed):
        return f"{row} lr={lr:g} seed={seed}"

    def run(self, row, lr, seed):
        key = self.key(row, lr, seed)
        if key in self.results:
            return self.results[key]
        run_dir = self.out_dir / key.replace(" ", "-").replace("=", "")
        shutil.rmtree(run_dir, ignore_errors=True)  # a run that was stopped starts over
        rate = [] if lr == self.settings.learning_rate else [  # the config's own rate is left as it is
            f"--learning_rate={lr:g}", f"--min_lr={lr * self.settings.min_lr / self.settings.learning_rate:g}"]
        command = ["python", os.path.relpath(ROOT / "train.py"), self.config, GPT2_PARTS, *row_flags(row),
                   *self.overrides, *rate, f"--seed={seed}", f"--out_dir={run_dir}"]
        started = time.perf_counter()
        result = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True)
        wall = round(time.perf_counter() - started, 1)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or [""]
            raise UserError(f"{' '.join(command)} failed (exit status {result.returncode}): {tail[0]}")
        loss = best_val_loss(run_dir)
        if loss is None:
            raise UserError(f"{' '.join(command)} ended without a val loss: make max_iters reach an eval_interval")
        with self.lock:
            self.results[key] = {"best_val_loss": loss, "iterations": iterations(run_dir), "wall_seconds": wall,
                                 "command": " ".join(command)}
            with atomic_write(self.file, "w") as f:
                json.dump(self.results, f, indent=1)
        print(f"{key}: best val loss {loss:.4f}, {iterations(run_dir):,} iterations, {wall:.0f} s", flush=True)
        return self.results[key]


def markdown(table, rows, rates, chosen, seeds):
    """The table: each row's chosen learning rate, loss per seed, mean, spread, and mean against gpt2's."""
    got = {row: [table.results[table.key(row, chosen[row], s)] for s in seeds] for row in rows}
    losses = {row: [r["best_val_loss"] for r in runs] for row, runs in got.items()}
    means = {row: statistics.mean(values) for row, values in losses.items()}
    tried = f" (of {', '.join(f'{lr:g}' for lr in rates)})" if len(rates) > 1 else ""
    lines = [f"| row | flags | learning rate{tried} | seeds {', '.join(map(str, seeds))} | mean | spread "
             f"| against gpt2 | iterations | mean wall time |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        against = f"{means[row] - means['gpt2']:+.4f}" if "gpt2" in means and row != "gpt2" else ""
        wall = statistics.mean(r["wall_seconds"] for r in got[row])
        flags = f"`{' '.join(row_flags(row))}`" if row_flags(row) else "(GPT-2's parts)"
        steps = ", ".join(f"{r.get('iterations', 0):,}" for r in got[row])
        lines.append(f"| {row} | {flags} | {chosen[row]:g} | "
                     f"{', '.join(f'{v:.4f}' for v in losses[row])} | {means[row]:.4f} | "
                     f"{max(losses[row]) - min(losses[row]):.4f} | {against} | {steps} | {wall:.0f} s |")
    return "\n".join(lines)


def main(argv):
    parser = ArgumentParser(__doc__)
    parser.add_argument("config", help="a config file, e.g. configs/shakespeare_cpu.py")
    parser.add_argument("--rows", nargs="+", default=["gpt2", *PARTS, "newer"], help="the rows, in order")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1337, 1, 2], help="the seeds of every row")
    parser.add_argument("--learning_rates", nargs="+", type=float,
                        help="tried on the first seed for each row (default: the config's alone)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (1 on a CPU)")
    parser.add_argument("--out_dir", required=True, help="the runs and results.json (an existing one goes on)")
    args, overrides = parser.parse_known_args(argv)
    if args.parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {args.parallel}")
    for row in args.rows:
        row_flags(row)
    config = load_settings(TrainConfig, [args.config, GPT2_PARTS, *overrides])  # a mistake is one line here, before any run
    rates = args.learning_rates or [config.learning_rate]
    table = Table(args.config, overrides, args.out_dir, config)
    first, rest = args.seeds[0], args.seeds[1:]
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(lambda job: table.run(*job), [(row, lr, first) for row in args.rows for lr in rates]))
        chosen = {row: min(rates, key=lambda lr: table.run(row, lr, first)["best_val_loss"]) for row in args.rows}
        list(pool.map(lambda job: table.run(*job), [(row, chosen[row], s) for row in args.rows for s in rest]))
    print(markdown(table, args.rows, rates, chosen, args.seeds))


if __name__ == "__main__":
    sys.exit(run_cli(main))
