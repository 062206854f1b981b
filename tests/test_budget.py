"""time_budget: a run sized to the seconds it is given, chosen once its steps are measured,
recorded in the checkpoint so a resume repeats the same schedule."""

import os
import signal
from pathlib import Path

import pytest
import torch

import train
from gptkit import budget
from gptkit.checkpoint import load_checkpoint
from gptkit.settings import UserError


def budget_args(char_data, out_dir, **extra):
    values = {"data_dir": char_data, "dataset": "tiny", "out_dir": out_dir, "n_layer": 2, "n_head": 2, "n_embd": 32,
              "block_size": 16, "batch_size": 4, "gradient_accumulation_steps": 1, "eval_interval": 20,
              "eval_iters": 2, "log_interval": 10, "warmup_iters": 20, "learning_rate": 1e-3, "device": "cpu",
              "dtype": "float32", "dropout": 0.1, "time_budget": 60, **extra}
    return [f"--{k}={v}" for k, v in values.items()]


def fixed_choice(monkeypatch, max_iters):
    """The budget's choice, made what the test needs (its arithmetic is tested on its own below)."""
    monkeypatch.setattr(budget.TimeBudget, "choose",
                        lambda self, it, interval, seconds: (max_iters, f"time_budget: {max_iters:,} iterations"))


def stop_at(monkeypatch, iteration):
    """SIGINT to this process after the step that reaches iteration, as Ctrl-C would."""
    step = train.train_step

    def stepped(run, lr):
        step(run, lr)
        if run.iter_num + 1 == iteration:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train, "train_step", stepped)


def test_a_budgeted_run_stopped_and_resumed_equals_the_straight_run(char_data, tmp_path, monkeypatch, capsys):
    fixed_choice(monkeypatch, 70)
    with monkeypatch.context() as m:
        stop_at(m, 45)
        assert train.main(budget_args(char_data, tmp_path / "budgeted")) == 0
    out = capsys.readouterr().out
    assert "time_budget: 70 iterations" in out and "stopped at iteration 45" in out
    saved = load_checkpoint(tmp_path / "budgeted" / "ckpt.pt")["train_config"]
    assert (saved["max_iters"], saved["lr_decay_iters"]) == (70, 70)  # the choice, recorded
    fixed_choice(monkeypatch, 999)  # a resume that chose afresh would train to 999
    assert train.main(budget_args(char_data, tmp_path / "budgeted", init_from="resume")) == 0
    assert "time_budget: 70 iterations, as chosen when the run started" in capsys.readouterr().out
    assert train.main(budget_args(char_data, tmp_path / "straight", max_iters=70)) == 0
    a, b = (load_checkpoint(tmp_path / name / "ckpt.pt") for name in ("budgeted", "straight"))
    assert a["iter_num"] == b["iter_num"] == 70
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_run_that_slows_past_its_budget_stops_there_and_a_resume_finishes_it(char_data, tmp_path, monkeypatch,
                                                                                 capsys):
    # The machine slows after the choice: the run stops at its budget's end, evaluated and
    # saved, and a resume trains the rest of the same schedule, weight for weight the straight run.
    fixed_choice(monkeypatch, 70)
    checks = []

    def passed(self, eval_seconds):  # the budget's end comes at the 25th check after the choice
        checks.append(eval_seconds)
        return len(checks) >= 25
    with monkeypatch.context() as m:
        m.setattr(budget.Deadline, "passed", passed)
        assert train.main(budget_args(char_data, tmp_path / "budgeted")) == 0
    out = capsys.readouterr().out
    assert "time_budget 60 s: stopped at iteration 44 of 70" in out and "--init_from=resume" in out
    assert "step 44: train loss" in out  # evaluated where it stopped
    assert load_checkpoint(tmp_path / "budgeted" / "ckpt.pt")["iter_num"] == 44
    assert train.main(budget_args(char_data, tmp_path / "budgeted", init_from="resume")) == 0
    assert train.main(budget_args(char_data, tmp_path / "straight", max_iters=70)) == 0
    a, b = (load_checkpoint(tmp_path / name / "ckpt.pt") for name in ("budgeted", "straight"))
    assert a["iter_num"] == b["iter_num"] == 70
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_max_iters_given_means_what_it_says(char_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(budget.TimeBudget, "choose", lambda *args: pytest.fail("the budget chose, though max_iters was given"))
    assert train.main(budget_args(char_data, tmp_path / "out", time_budget=0.001, max_iters=30)) == 0
    saved = load_checkpoint(tmp_path / "out" / "ckpt.pt")
    assert saved["iter_num"] == 30 and saved["train_config"]["lr_decay_iters"] == 30  # decay follows max_iters
    assert "time_budget" not in capsys.readouterr().out
    assert train.main(budget_args(char_data, tmp_path / "short", max_iters=5)) == 0  # shorter than its warm-up
    assert load_checkpoint(tmp_path / "short" / "ckpt.pt")["iter_num"] == 5


def test_a_budget_smaller_than_the_warm_up_is_one_line_and_exit_status_2(char_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        train.main(budget_args(char_data, tmp_path / "out", time_budget=0.01))
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: time_budget=0.01 s leaves no time to train after the 20 warm-up")
    assert not (Path(tmp_path) / "out" / "ckpt.pt").exists()


def test_a_budget_needs_a_warm_up_to_measure_in(char_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(budget_args(char_data, tmp_path / "out", warmup_iters=2))
    assert "needs warmup_iters of at least 10" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_choice_fits_the_steps_and_evaluations_in_what_is_left(monkeypatch):
    """100 s of budget, 10 s gone at step 100, 0.05 s a step, an evaluation of 2 s every 200 steps:
    n steps more and their evaluations fit 95 s - 10 s; rounded down to 2 significant digits, and a
    step time 1% off gives the same choice."""
    clock = {"now": 10.0}
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock["now"])
    chosen = []
    for step in (0.05, 0.0505, 0.0495):
        b = budget.TimeBudget(100, started=0.0, warmup_iters=100, first_iter=0)
        for it in range(1, 101):
            b.stepped(it, step)
        chosen.append(b.choose(100, 200, 2.0))
    total, line = chosen[0]
    # 85 s left: 1,380 steps more (69 s) and the 8 evaluations at 200, 400, ..., 1,400 and the end
    # (16 s): 1,480 in all, 1,400 rounded down
    assert total == 1400 and "--max_iters=1400" in line
    assert [t for t, _ in chosen] == [1400] * 3
    with pytest.raises(UserError, match="leaves no time to train"):
        clock["now"] = 99.0
        b.choose(100, 200, 2.0)


def test_a_run_saved_without_a_budget_resumes_with_its_own_max_iters(char_data, tmp_path, monkeypatch, capsys):
    """A checkpoint from before the config had a time_budget (or nanoGPT's) resumed under one keeps
    the max_iters and lr_decay_iters it was saved with: its schedule goes on, nothing is chosen."""
    monkeypatch.setattr(budget.TimeBudget, "choose", lambda *args: pytest.fail("chose for a run that had its steps"))
    plain = budget_args(char_data, tmp_path / "out", max_iters=30, lr_decay_iters=50)
    plain = [a for a in plain if not a.startswith("--time_budget")]
    with monkeypatch.context() as m:
        stop_at(m, 25)
        assert train.main(plain) == 0
    assert train.main(budget_args(char_data, tmp_path / "out", init_from="resume")) == 0
    assert "time_budget: 30 iterations, as the run was saved with" in capsys.readouterr().out
    saved = load_checkpoint(tmp_path / "out" / "ckpt.pt")
    assert saved["iter_num"] == 30 and saved["train_config"]["lr_decay_iters"] == 50
