"""What a run records as it goes: out_dir/metrics.jsonl, one strict-JSON object per line (a
nan or inf becomes null), and the same rows in Weights & Biases when wandb_log is set.

Two kinds of row: a training step's, every log_interval iterations,
    {"iter", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec", "elapsed"}
and an evaluation's,
    {"iter", "tokens", "train_loss", "val_loss", "elapsed"}
where tokens counts the training tokens seen so far and elapsed the run's wall seconds.
"""

import json
import math
from dataclasses import asdict
from pathlib import Path

from checkpoint import atomic_write
from settings import UserError, reason


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
