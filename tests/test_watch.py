"""Tests of what a user watches: the log line, metrics.jsonl, loss.png, the comparison
picture and terminal chart, progress bars only in a terminal, and Weights & Biases."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

import plot
import train
from gptkit.runlog import Clock
from gptkit.train_settings import TrainConfig
from gptkit.plots import loss_figure
from gptkit.runlog import read_metrics

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEP_FIELDS = {"iter": int, "tokens": int, "loss": float, "lr": float, "grad_norm": float,
               "tokens_per_sec": float, "mfu": float, "elapsed": float}
EVAL_FIELDS = {"iter": int, "tokens": int, "train_loss": float, "val_loss": float, "train_bpb": float, "val_bpb": float,
               "elapsed": float}


def arg_value(args, key):
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{key}="))


def with_args(args, **changes):
    kept = [a for a in args if a.split("=", 1)[0][2:] not in changes]
    return kept + [f"--{k}={v}" for k, v in changes.items()]


def strict_rows(path):
    """The rows of a metrics.jsonl, parsed strictly: a bare NaN or Infinity fails."""
    def reject(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return [json.loads(line, parse_constant=reject) for line in Path(path).read_text().splitlines()]


def assert_png(path):
    assert Path(path).read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = imread(path).shape  # decodes: a whole picture, not only a header
    assert height > 100 and width > 100


@pytest.fixture
def trained_run(tiny_train_args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.main(tiny_train_args) == 0
    return Path(arg_value(tiny_train_args, "out_dir")), capsys.readouterr().out


def test_metrics_rows_have_every_field_typed(trained_run, tiny_train_args):
    out, _ = trained_run
    rows = strict_rows(out / "metrics.jsonl")
    tokens_per_step = 1 * 4 * 16  # gradient_accumulation_steps x batch_size x block_size of tiny_train_args
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    assert len(steps) + len(evals) == len(rows)
    log_interval, eval_interval = int(arg_value(tiny_train_args, "log_interval")), 10
    assert [r["iter"] for r in steps] == list(range(log_interval, 21, log_interval))
    assert [r["iter"] for r in evals] == list(range(0, 21, eval_interval))
    for row, fields in [(r, STEP_FIELDS) for r in steps] + [(r, EVAL_FIELDS) for r in evals]:
        assert set(row) == set(fields), row
        for key, kind in fields.items():
            assert isinstance(row[key], kind) and not isinstance(row[key], bool), (key, row)
        assert row["tokens"] == row["iter"] * tokens_per_step
    elapsed = [r["elapsed"] for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert all(r["grad_norm"] > 0 and r["tokens_per_sec"] > 0 for r in steps)


def test_log_line_shows_progress_time_left_and_a_summary(trained_run):
    _, output = trained_run
    lines = output.splitlines()
    step_lines = [line for line in lines if line.startswith("iter ")]
    assert step_lines[0].startswith("iter 5/20: loss ")
    for part in ("lr ", "ms/iter", "tok/s", "elapsed", "left"):
        assert part in step_lines[0], part
    # at the last step only the final evaluation is left: never more than at the first log line
    left = [line.rsplit(", ", 1)[1] for line in step_lines]
    assert all(re.fullmatch(r"\d+:\d\d left", text) for text in left), left
    seconds = [int(text.split(":")[0]) * 60 + int(text.split(":")[1].split()[0]) for text in left]
    assert seconds[-1] <= seconds[0], left
    assert any(line.startswith("best val loss ") for line in lines)
    assert any("20 iterations, 1,280 tokens in" in line and "tok/s" in line for line in lines)


def test_time_left_counts_the_steps_and_evaluations_to_come():
    clock = Clock()
    clock.stepped(30.0)  # the first step compiles: not what the others will take
    clock.stepped(2.0)
    clock.stepped(4.0)  # 3 s a step
    clock.evaluated(25.0)  # so does the first evaluation
    clock.evaluated(10.0)
    config = TrainConfig(max_iters=100, eval_interval=30, warmup_iters=0, lr_decay_iters=100)
    # just after the step to 40: 60 steps and the evaluations at 60, 90 and 100 (the end) remain
    assert clock.left(40, config) == pytest.approx(60 * 3 + 3 * 10)
    assert clock.left(90, config) == pytest.approx(10 * 3 + 2 * 10)  # the one at 90 is still to come
    assert clock.left(100, config) == pytest.approx(10)  # only the final evaluation


def test_time_left_from_one_step_uses_it():
    clock = Clock()
    clock.stepped(2.0)
    clock.evaluated(5.0)
    config = TrainConfig(max_iters=10, eval_interval=10, warmup_iters=0, lr_decay_iters=10)
    assert clock.left(1, config) == pytest.approx(9 * 2 + 5)


def test_loss_png_holds_the_curves_of_the_run(trained_run):
    out, _ = trained_run
    assert_png(out / "loss.png")
    rows = read_metrics(out / "metrics.jsonl")
    figure = loss_figure(rows)
    loss_axis, lr_axis = figure.axes[0], figure.axes[1]
    lines = {line.get_label(): line for line in loss_axis.get_lines()}
    evals = [r for r in rows if "val_loss" in r]
    steps = [r for r in rows if "loss" in r]
    assert list(lines["val loss"].get_ydata()) == [r["val_loss"] for r in evals]
    assert list(lines["train loss (eval)"].get_ydata()) == [r["train_loss"] for r in evals]
    assert list(lines["train loss (step)"].get_xdata()) == [r["iter"] for r in steps]
    best = min(evals, key=lambda r: r["val_loss"])
    label, marker = next((label, line) for label, line in lines.items() if label.startswith("best val"))
    assert list(marker.get_xdata()) == [best["iter"]] and list(marker.get_ydata()) == [best["val_loss"]]
    assert label == f"best val {best['val_loss']:.4f} (iter {best['iter']}, {best['val_bpb']:.4f} bits per byte)"
    assert list(lr_axis.get_lines()[0].get_ydata()) == [r["lr"] for r in steps]


def test_loss_png_is_drawn_at_each_evaluation(tiny_train_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    drawn = []
    monkeypatch.setattr(train, "save_png", lambda figure, path: drawn.append(len(figure.axes[0].get_lines())))
    assert train.main(tiny_train_args) == 0
    assert len(drawn) == 3  # iterations 0, 10 and 20
    assert drawn[0] < drawn[-1]  # the later pictures hold the curves the first could not


def test_compare_draws_every_run(tiny_train_args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = [tmp_path / "lr-high", tmp_path / "lr-low"]
    for out, lr in zip(runs, ("3e-3", "3e-4")):
        assert train.main(with_args(tiny_train_args, out_dir=out, learning_rate=lr)) == 0
    picture = tmp_path / "compare.png"
    assert plot.main([str(r) for r in runs] + ["--out", str(picture), "--label", "learning_rate"]) == 0
    assert_png(picture)
    figure = plot.compare_figure({str(r): read_metrics(r / "metrics.jsonl") for r in runs})
    lines = figure.axes[0].get_lines()
    assert len(lines) == 2 * len(runs)  # each run: its training steps and its val loss
    val_lines = [line for line in lines if not line.get_label().startswith("_")]
    for run, line in zip(runs, val_lines):
        assert line.get_label().startswith(str(run))
        assert list(line.get_ydata()) == [r["val_loss"] for r in read_metrics(run / "metrics.jsonl")
                                          if "val_loss" in r]
    bpb = plot.compare_figure({str(r): read_metrics(r / "metrics.jsonl") for r in runs}, y="bpb")
    for run, line in zip(runs, bpb.axes[0].get_lines()):  # --y bpb: val bits per byte alone, a line a run
        assert list(line.get_ydata()) == [r["val_bpb"] for r in read_metrics(run / "metrics.jsonl") if "val_bpb" in r]
    assert len(bpb.axes[0].get_lines()) == len(runs) and "bits per byte" in bpb.axes[0].get_ylabel()
    assert plot.main([str(r) for r in runs] + ["--out", str(tmp_path / "bpb.png"), "--y", "bpb"]) == 0
    assert_png(tmp_path / "bpb.png")
    capsys.readouterr()
    assert plot.main([str(r) for r in runs] + ["--terminal", "--label", "learning_rate"]) == 0
    text = capsys.readouterr().out
    assert "a: learning_rate=0.003" in text and "b: learning_rate=0.0003" in text
    chart = [line.split("|", 1)[1] for line in text.splitlines() if "|" in line]
    assert any("a" in row for row in chart) and any("b" in row for row in chart)


def test_compare_keeps_runs_whose_labels_are_the_same(trained_run, tmp_path, capsys):
    out, _ = trained_run
    twin = tmp_path / "twin"
    shutil.copytree(out, twin)
    assert plot.main([str(out), str(twin), "--terminal", "--label", "learning_rate"]) == 0
    legend = [line for line in capsys.readouterr().out.splitlines() if line[:5] in ("  a: ", "  b: ")]
    assert legend[0].startswith("  a: learning_rate=0.001 (val") and legend[1].startswith(
        f"  b: learning_rate=0.001 ({twin}) (val")


def test_terminal_chart_puts_the_curve_where_the_values_are():
    rows = [{"iter": i, "train_loss": 0.0, "val_loss": v} for i, v in [(0, 4.0), (10, 2.0)]]
    chart = plot.terminal_chart({"run": rows}, width=11, height=5).splitlines()
    assert chart[0].startswith("  4.0000 |a")  # the first point: top left
    assert chart[4].startswith("  2.0000 |") and chart[4].endswith("a")  # the last: bottom right


def test_compare_names_a_folder_without_metrics(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        plot.main([str(tmp_path)])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: no metrics.jsonl in {tmp_path}; name folders that " \
                                             f"train.py wrote (its out_dir)"


@pytest.mark.slow
def test_no_bar_output_when_not_a_terminal(tiny_train_args, tmp_path):
    result = subprocess.run([sys.executable, "train.py", *with_args(tiny_train_args, max_iters=12, eval_interval=6)],
                            cwd=ROOT, capture_output=True, timeout=120)  # bytes: text mode would turn \r into \n
    assert result.returncode == 0, result.stderr
    assert b"\r" not in result.stdout and b"\r" not in result.stderr
    assert b"iter 10/12" in result.stdout


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_live_bar_in_a_terminal(tiny_train_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert train.main(tiny_train_args) == 0
    shown = terminal.getvalue()
    assert "\r" in shown and "training" in shown and "evaluating" in shown


def wandb_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "HOME": str(tmp_path), "WANDB_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_wandb_offline_logs_the_metrics_and_settings(tiny_train_args, tmp_path):
    args = with_args(tiny_train_args, wandb_log=True, max_iters=10, eval_interval=5)
    result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env=wandb_env(tmp_path, WANDB_MODE="offline"))
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    for key in (b"val_loss", b"train_loss", b"grad_norm", b"tokens_per_sec", b"learning_rate", b"n_layer"):
        assert key in logged, key


@pytest.mark.slow
def test_wandb_without_a_login_is_one_line_before_anything_is_written(tiny_train_args, tmp_path):
    args = with_args(tiny_train_args, wandb_log=True)
    result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env=wandb_env(tmp_path, WANDB_MODE="online"), stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: cannot start Weights & Biases")
    assert "WANDB_MODE=offline" in errors[0]
    assert not Path(arg_value(tiny_train_args, "out_dir")).exists()


@pytest.mark.parametrize("num_samples, bar", [(3, True), (1, False)])
def test_sampling_several_samples_shows_a_bar_in_a_terminal(trained_run, monkeypatch, num_samples, bar):
    """Several samples print only when all are done: a bar shows them coming. One sample
    streams its text, which is its own progress."""
    import sample

    out, _ = trained_run
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert sample.main([f"--out_dir={out}", f"--num_samples={num_samples}", "--max_new_tokens=30",
                        "--device=cpu"]) == 0
    assert ("sampling" in terminal.getvalue()) == bar
