"""What a run shows and records as it goes: log lines, a live progress bar in a terminal (none in
a log file), the time left, out_dir/metrics.jsonl (one strict-JSON object per line: a nan or inf
becomes null), and the same rows in Weights & Biases when wandb_log is set.

metrics.jsonl has two kinds of row: a training step's, every log_interval iterations,
    {"iter", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "elapsed"}
and an evaluation's,
    {"iter", "tokens", "train_loss", "val_loss", "train_bpb", "val_bpb", "elapsed"}
(with "hellaswag_acc" and "hellaswag_acc_norm" where HellaSwag was scored), where tokens counts
the training tokens seen so far, elapsed the run's wall seconds, and bpb the evaluated loss in
bits per UTF-8 byte of text (comparable across tokenizers).
"""

import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from gptkit.files import atomic_write
from gptkit.settings import UserError, reason


def progress(iterable=None, total=None, desc=None, unit="it", leave=False, initial=0, unit_scale=False,
             disable=False):
    """A tqdm bar on stderr when it is a terminal; when output goes to a file or a pipe the bar is
    off (no carriage returns in a log), and the caller's own log lines are the record."""
    disable = disable or os.environ.get("RANK", "0") != "0"  # under torchrun, rank 0 alone shows progress
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, unit_scale=unit_scale,
                file=sys.stderr, disable=True if disable else None, dynamic_ncols=True)


def log(message):
    """Print a line without tearing a live progress bar (tqdm redraws it below the line)."""
    tqdm.write(message, file=sys.stdout)


def duration(seconds):
    """3725.2 -> '1:02:05', 65 -> '1:05'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Clock:
    """The run's wall time (carried across resumes) and the time left, from the measured
    mean step and evaluation times of this session. The session's first step and first
    evaluation are left out of those means once there are others: they include compiling
    (compile=True) and warming caches."""

    def __init__(self, elapsed_before=0.0):
        self.elapsed_before, self.started = elapsed_before, time.perf_counter()
        self.step_seconds, self.steps, self.eval_seconds, self.evals = 0.0, 0, 0.0, 0
        self.first_step = self.first_eval = 0.0

    def session(self):
        return time.perf_counter() - self.started

    def elapsed(self):
        return self.elapsed_before + self.session()

    def stepped(self, seconds):
        self.first_step = seconds if self.steps == 0 else self.first_step
        self.step_seconds, self.steps = self.step_seconds + seconds, self.steps + 1

    def evaluated(self, seconds):
        self.first_eval = seconds if self.evals == 0 else self.first_eval
        self.eval_seconds, self.evals = self.eval_seconds + seconds, self.evals + 1

    def evaluation_seconds(self):
        """An evaluation's time, as this session measured it (0 before the first)."""
        return mean_after_first(self.eval_seconds, self.evals, self.first_eval)

    def left(self, iter_num, config):
        """Seconds to the end, just after the step to iter_num: the steps left, and the
        evaluations still to come (at each multiple of eval_interval from iter_num on, and at
        max_iters)."""
        evals_left = config.max_iters // config.eval_interval - (iter_num - 1) // config.eval_interval
        evals_left += config.max_iters % config.eval_interval != 0
        step = mean_after_first(self.step_seconds, self.steps, self.first_step)
        return (config.max_iters - iter_num) * step + evals_left * self.evaluation_seconds()


def mean_after_first(total, count, first):
    """The mean of count durations summing to total, without the first of them when there are others."""
    return (total - first) / (count - 1) if count > 1 else total / max(count, 1)


def strict(row):
    """row with every non-finite float as None: json.dumps would write a bare NaN."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def read_metrics(path):
    """The rows of a metrics.jsonl; a line that is not JSON (a run killed mid-write) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def start_wandb(config):
    """Start a Weights & Biases run with the full settings; returns the wandb module to log
    with. A missing login or network is a UserError naming the ways on."""
    import wandb

    try:
        wandb.init(project=config.wandb_project, name=config.wandb_run_name, config=asdict(config),
                   settings=wandb.Settings(init_timeout=60, silent=True))
    except Exception as e:
        raise UserError(f"cannot start Weights & Biases ({reason(e)}); log in with: wandb login, "
                        f"or set WANDB_MODE=offline to log to ./wandb, or set wandb_log=False") from None
    return wandb


class Metrics:
    """metrics.jsonl (none when path is None), and Weights & Biases when given a started wandb."""

    def __init__(self, path, keep_lines, wandb=None):
        self.file, self.rows, self.wandb = None, [], wandb
        if path is None:
            return
        # A new run starts the file afresh; a resumed one keeps the lines its checkpoint had seen.
        lines = path.read_text().splitlines(keepends=True)[:keep_lines] if keep_lines and path.is_file() else []
        with atomic_write(path, "w") as f:
            f.writelines(lines)
        self.rows = [json.loads(line) for line in lines]
        self.file = open(path, "a")

    @property
    def lines(self):
        return len(self.rows)

    def record(self, row):
        row = strict(row)
        if self.file:
            self.file.write(json.dumps(row, allow_nan=False) + "\n")
            self.file.flush()
            self.rows.append(row)
        if self.wandb:
            self.wandb.log({k: v for k, v in row.items() if k != "iter" and v is not None}, step=row["iter"])

    def close(self):
        if self.file:
            self.file.close()
        if self.wandb:
            self.wandb.finish()


def step_seconds(rows):
    """[(iteration, seconds a step took)] from a metrics.jsonl's training rows: each row's
    tokens/s over the steps since the row before it (log_interval=1: one row a step)."""
    steps = [r for r in rows if r.get("tokens_per_sec")]
    times, previous = [], (0, 0)
    for row in steps:
        tokens, iters = row["tokens"] - previous[0], row["iter"] - previous[1]
        if iters > 0 and tokens > 0:
            times.append((row["iter"], tokens / row["tokens_per_sec"] / iters))
        previous = (row["tokens"], row["iter"])
    return times
