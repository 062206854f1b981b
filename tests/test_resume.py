"""Nothing lost: atomic checkpoints, exact resume, clean stops, safe loading, clear errors.

Every run here is a tiny model on the CPU. Runs that must be stopped by a signal are real
`python train.py` processes; the rest run in-process through train.main / sample.main."""

import errno
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import sample
import train
from gptkit.checkpoint import load_checkpoint
from model import GPT
from gptkit.datasets import prepare_shakespeare_char
from gptkit.data import read_meta, write_tokens
from gptkit.settings import UserError

ROOT = Path(__file__).resolve().parent.parent

# This module's own text: a small vocabulary, a few thousand characters.
TEXT = ("KING RICHARD:\nNow is the winter of our discontent\nMade glorious summer by this sun of York;\n"
        "And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n\n") * 25

# Settings of the module's trained run (the table of mistakes runs against it).
TRAINED = dict(max_iters=20, eval_interval=10)


def settings(data_dir, out_dir, **extra):
    """--key=value for a tiny CPU run; dropout > 0 so the torch RNG state matters to a resume."""
    values = dict(data_dir=data_dir, dataset="tiny", out_dir=out_dir, n_layer=2, n_head=2, n_embd=32,
                  block_size=16, batch_size=4, gradient_accumulation_steps=2, max_iters=20, eval_interval=5,
                  eval_iters=2, log_interval=1, warmup_iters=2, lr_decay_iters=40, learning_rate=1e-3,
                  dropout=0.1, always_save_checkpoint=True, device="cpu", dtype="float32")
    values.update(extra)
    return [f"--{key}={value}" for key, value in values.items()]


def untimed(rows):
    """metrics.jsonl rows without the fields that measure time."""
    return [{k: v for k, v in row.items() if k not in ("elapsed", "tokens_per_sec", "mfu")} for row in rows]


def file_hashes(folder):
    """{name: sha256} of every file in folder (hidden ones included)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())
            if p.is_file()}


def metrics(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_identical(a, b, where="state"):
    """Recursive equality, bit for bit on tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training_state(path_a, path_b):
    """Two checkpoints hold the same weights, optimizer, batch position and random states."""
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    assert a["iter_num"] == b["iter_num"]
    for key in ("model", "optimizer", "sampler", "rng"):
        assert_identical(a[key], b[key], key)


def all_finite(state):
    return all(torch.isfinite(t).all() for t in state["model"].values())


def break_training_batches(monkeypatch, numbers, breaking):
    """Make the training forward passes with these numbers (counted from 1) go wrong:
    breaking(logits, loss) returns the loss to use."""
    forward, calls = GPT.forward, []

    def forward_with_bad_batches(model, idx, targets=None, **kwargs):
        logits, loss = forward(model, idx, targets, **kwargs)
        if model.training:
            calls.append(1)
            if len(calls) in numbers:
                loss = breaking(logits, loss)
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward_with_bad_batches)


def nan_loss(logits, loss):
    return loss * float("nan")


def nan_gradient(logits, loss):
    """The loss stays finite; the gradient it sends back is nan."""
    logits.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    return loss


def exit_code(main, args):
    try:
        return main(args)
    except SystemExit as e:
        return e.code


def one_error_line(capsys, code, *fragments):
    """Exit status 2 and exactly one stderr line, 'error: ...', holding each fragment."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """data/tiny (good), and the broken data sets of the mistakes table beside it."""
    root = tmp_path_factory.mktemp("data")
    source = root / "input.txt"
    source.write_text(TEXT)
    prepare_shakespeare_char(root / "tiny", input_path=str(source))
    (root / "nodata").mkdir()  # a dataset folder with no files, and no prepare/nodata.py
    for split in ("train", "val"):  # a split with no tokens at all
        folder = root / f"empty_{split}"
        shutil.copytree(root / "tiny", folder)
        write_tokens(folder / f"{split}.bin", [])
    short = root / "short.txt"
    short.write_text(TEXT[:12])  # 10 train tokens, 2 val tokens: less than a block of 16
    prepare_shakespeare_char(root / "short", input_path=str(short))
    other = root / "other.txt"
    other.write_text(TEXT.replace("a", "@"))  # as many characters as tiny's, but other ones
    prepare_shakespeare_char(root / "other", input_path=str(other))
    return root


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """An out_dir with ckpt.pt, best.pt and metrics.jsonl from a real run."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert train.main(settings(data_dir, root / "out", **TRAINED)) == 0
    out = root / "out"
    assert {"ckpt.pt", "best.pt", "metrics.jsonl"} <= set(file_hashes(out))
    return out


@pytest.fixture
def trained_copy(trained, tmp_path):
    """A copy of the trained out_dir, for runs that may legitimately write to it."""
    copy = tmp_path / "out"
    shutil.copytree(trained, copy)
    return copy


# ----------------------------------------------------------------------------- exact resume

@pytest.mark.parametrize("stops, eval_interval, optimizer", [
    ((10,), 5, "adamw"),    # the stop is an evaluation point
    ((7,), 5, "adamw"),     # it is not: the first piece adds an evaluation at its max_iters
    ((6, 13), 4, "adamw"),  # resumed twice, neither stop an evaluation point
    ((7,), 5, "muon"),      # Muon's momentum carries over too
])
@pytest.mark.slow
def test_resume_gives_the_same_run(data_dir, tmp_path, monkeypatch, stops, eval_interval, optimizer):
    """Training to N in pieces (max_iters=k, then --init_from=resume to N) equals training to N at once."""
    monkeypatch.chdir(tmp_path)
    n = 20
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    assert train.main(settings(data_dir, straight, max_iters=n, eval_interval=eval_interval,
                               optimizer=optimizer)) == 0
    for i, k in enumerate(stops + (n,)):
        init_from = "scratch" if i == 0 else "resume"
        assert train.main(settings(data_dir, pieces, max_iters=k, eval_interval=eval_interval,
                                   init_from=init_from, optimizer=optimizer)) == 0
        assert load_checkpoint(pieces / "ckpt.pt")["iter_num"] == k  # each piece ends with a save

    assert_same_training_state(straight / "ckpt.pt", pieces / "ckpt.pt")
    assert load_checkpoint(pieces / "ckpt.pt")["iter_num"] == n

    # metrics.jsonl: one row per logged iteration, in order, equal to the uninterrupted run's but
    # for the times; the only extra rows are the evaluations each piece makes at its own max_iters.
    whole, parts = untimed(metrics(straight)), untimed(metrics(pieces))
    assert [e["iter"] for e in whole if "loss" in e] == list(range(1, n + 1))
    extra = [e for e in parts if "val_loss" in e and e["iter"] in stops and e["iter"] % eval_interval]
    assert len(extra) == sum(1 for k in stops if k % eval_interval)
    assert [e for e in parts if e not in extra] == whole
    elapsed = [e["elapsed"] for e in metrics(pieces)]
    assert elapsed == sorted(elapsed)  # the run's time goes on across resumes, never back to 0


# ----------------------------------------------------------------------------- processes

def spawn(args, stdout, stderr):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "train.py", *map(str, args)], cwd=ROOT, env=env,
                            stdout=open(stdout, "w"), stderr=open(stderr, "w"))


def wait_for(condition, proc, stderr, deadline=90):
    """Poll until condition() holds; fail if the process ends first or the deadline passes."""
    end = time.monotonic() + deadline
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"train.py ended early ({proc.returncode}): {Path(stderr).read_text()}")
        if time.monotonic() > end:
            pytest.fail("train.py made no progress")
        time.sleep(0.02)


def logged_steps(out_dir):
    """How many step lines metrics.jsonl has now (it may be half-written)."""
    try:
        return (Path(out_dir) / "metrics.jsonl").read_text().count('"loss"')
    except FileNotFoundError:
        return 0


def finish(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_with_a_checkpoint_and_resume_is_exact(data_dir, tmp_path, monkeypatch, sig):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    common = dict(eval_interval=4, eval_iters=1, lr_decay_iters=1000)
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    proc = spawn(settings(data_dir, out, max_iters=100_000, **common), stdout, stderr)
    try:
        wait_for(lambda: logged_steps(out) >= 6, proc, stderr)
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    finally:
        finish(proc)
    assert code == 0, stderr.read_text()
    assert "Traceback" not in stderr.read_text()
    assert "--init_from=resume" in stdout.read_text()  # says how to go on

    entries = metrics(out)
    stopped = entries[-1]["iter"]  # the last line: the step (or evaluation) it stopped after
    state = load_checkpoint(out / "ckpt.pt")
    assert state["iter_num"] == stopped
    assert 6 <= stopped < 100_000
    assert state["metrics_lines"] == len(entries)  # nothing logged after the checkpoint
    assert all_finite(state)

    n = stopped + 5
    assert train.main(settings(data_dir, out, max_iters=n, init_from="resume", **common)) == 0
    straight = tmp_path / "straight"
    assert train.main(settings(data_dir, straight, max_iters=n, **common)) == 0
    assert_same_training_state(straight / "ckpt.pt", out / "ckpt.pt")
    assert untimed(metrics(out)) == untimed(metrics(straight))


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_loadable_checkpoint(data_dir, tmp_path, monkeypatch):
    """kill -9 during a run that saves at every step: ckpt.pt is always whole, a resume always
    works, cleans up half-written temporary files, and the end result is the uninterrupted run's."""
    monkeypatch.chdir(tmp_path)
    rng = random.Random(20261123)
    out = tmp_path / "out"
    common = dict(n_embd=64, eval_interval=1, eval_iters=1, lr_decay_iters=1000)
    last_iter, leftovers = 0, set()
    for trial in range(5):
        init_from = "resume" if (out / "ckpt.pt").exists() else "scratch"
        stdout, stderr = tmp_path / f"stdout{trial}.txt", tmp_path / f"stderr{trial}.txt"
        proc = spawn(settings(data_dir, out, max_iters=100_000, init_from=init_from, **common), stdout, stderr)
        try:
            # Two step lines: at least one save of this run has finished; then kill at a random moment.
            wait_for(lambda: stdout.read_text().count("\niter ") >= 2, proc, stderr)
            # Leftovers of the previous kill were removed when this run started.
            assert not any((out / name).exists() for name in leftovers), leftovers
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            finish(proc)
        state = load_checkpoint(out / "ckpt.pt")  # whole, whatever the moment of the kill
        assert state["iter_num"] > last_iter and all_finite(state)
        last_iter = state["iter_num"]
        if (out / "best.pt").exists():
            assert all_finite(load_checkpoint(out / "best.pt"))
        leftovers = {p.name for p in out.glob(".ckpt.pt.*.tmp")}  # unique names: mkstemp's

    # Half-written files as a save killed part-way leaves them (whatever the kills above left too).
    (out / ".ckpt.pt.k1ll3d.tmp").write_bytes((out / "ckpt.pt").read_bytes()[:1000])
    (out / ".best.pt.link.tmp").write_bytes(b"")
    n = last_iter + 3
    assert train.main(settings(data_dir, out, max_iters=n, init_from="resume", **common)) == 0
    assert not list(out.glob(".ckpt.pt.*.tmp")) and not list(out.glob(".best.pt.*tmp"))
    assert load_checkpoint(out / "ckpt.pt")["iter_num"] == n
    # One step line per step: what killed runs logged past their last checkpoint was dropped.
    assert [e["iter"] for e in metrics(out) if "loss" in e] == list(range(1, n + 1))
    straight = tmp_path / "straight"
    assert train.main(settings(data_dir, straight, max_iters=n, **common)) == 0
    assert_same_training_state(straight / "ckpt.pt", out / "ckpt.pt")
    assert untimed(metrics(out)) == untimed(metrics(straight))


# ----------------------------------------------------------------------------- non-finite loss

def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(data_dir, trained_copy, tmp_path, monkeypatch,
                                                             capsys):
    monkeypatch.chdir(tmp_path)
    out = trained_copy
    before = file_hashes(out)
    start = load_checkpoint(out / "ckpt.pt")["iter_num"]
    capsys.readouterr()
    # A learning rate that makes the loss nan within a few steps; no evaluation in between.
    code = exit_code(train.main, settings(data_dir, out, init_from="resume", learning_rate=1e6, decay_lr=False,
                                          max_iters=100, eval_interval=1000))
    line = one_error_line(capsys, code, "at iteration")
    failed = int(re.search(r"at iteration (\d+)", line).group(1))
    assert start <= failed < 100
    steps = [e for e in metrics(out) if "loss" in e]
    assert steps[-1]["iter"] == failed  # the iteration named is the first step whose loss was not finite
    assert all(math.isfinite(e["loss"]) for e in steps)
    after = file_hashes(out)
    for name in ("ckpt.pt", "best.pt"):
        assert after[name] == before[name], name
    assert set(after) == set(before)  # no temporary files left


def test_nonfinite_loss_skip_completes_with_finite_weights(data_dir, trained_copy, tmp_path, monkeypatch,
                                                           capsys):
    """With nonfinite_loss='skip', the steps whose loss is nan (here: two chosen batches) leave
    the weights and optimizer as they were, and the run goes on to the end."""
    monkeypatch.chdir(tmp_path)
    out = trained_copy
    start = load_checkpoint(out / "ckpt.pt")["iter_num"]
    break_training_batches(monkeypatch, (3, 7), nan_loss)
    assert train.main(settings(data_dir, out, init_from="resume", max_iters=start + 10, eval_interval=1000,
                               nonfinite_loss="skip")) == 0
    assert capsys.readouterr().out.count("step skipped") == 2
    steps = {e["iter"]: e["loss"] for e in metrics(out) if "loss" in e}
    assert len([i for i, loss in steps.items() if loss is None]) == 2  # strict JSON: nan is written as null
    assert (out / "metrics.jsonl").read_text().count("NaN") == 0
    state = load_checkpoint(out / "ckpt.pt")
    assert state["iter_num"] == start + 10
    assert all_finite(state)
    assert all(torch.isfinite(t).all() for s in state["optimizer"]["state"].values()
               for t in s.values() if t.is_floating_point())


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_gradient_with_a_finite_loss_follows_the_policy(policy, data_dir, tmp_path, monkeypatch, capsys):
    """A step whose loss is finite but whose gradient is nan is never dropped silently: it
    stops the run (naming the gradient), or with nonfinite_loss='skip' is skipped, said so."""
    monkeypatch.chdir(tmp_path)
    break_training_batches(monkeypatch, (3,), nan_gradient)  # iteration 2, with one micro-batch per step
    out = tmp_path / "out"
    args = settings(data_dir, out, max_iters=6, gradient_accumulation_steps=1, nonfinite_loss=policy)
    capsys.readouterr()
    code = exit_code(train.main, args)
    if policy == "stop":
        one_error_line(capsys, code, "the gradient norm is nan at iteration 2")
        assert [e["iter"] for e in metrics(out) if "loss" in e] == [1, 2]
    else:
        assert code == 0
        assert capsys.readouterr().out.count("gradient norm is nan; step skipped") == 1
        state = load_checkpoint(out / "ckpt.pt")
        assert state["iter_num"] == 6 and all_finite(state)


@pytest.mark.parametrize("batch, eval_interval, named", [
    (3, 1000, 2),  # between log lines: read back when the next step is queued
    (5, 5, 4),  # the last step before an evaluation that would save: read back before it
])
def test_a_nonfinite_step_between_log_lines_is_named_and_nothing_saved(batch, eval_interval, named, data_dir,
                                                                       tmp_path, monkeypatch, capsys):
    """A step's loss is read back from the device after the next step is queued, not when it is
    taken; a nan one still stops the run naming its own iteration, before anything is saved."""
    monkeypatch.chdir(tmp_path)
    break_training_batches(monkeypatch, (batch,), nan_loss)  # iteration batch - 1, one micro-batch per step
    out = tmp_path / "out"
    capsys.readouterr()
    code = exit_code(train.main, settings(data_dir, out, max_iters=8, gradient_accumulation_steps=1,
                                          log_interval=100, eval_interval=eval_interval))
    one_error_line(capsys, code, f"the loss is nan at iteration {named};", "no checkpoint was saved yet")
    assert not (out / "ckpt.pt").exists()


@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_grad_clip_bounds_the_step_and_the_log_shows_the_norm_before_it(grad_clip, data_dir, tmp_path,
                                                                         monkeypatch):
    """The optimizer sees a gradient whose norm is at most grad_clip (0: the gradient as it is),
    and the log's grad_norm is the norm before clipping."""
    monkeypatch.chdir(tmp_path)
    seen = []

    def record_norm(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.nn.utils.get_total_norm(grads)))

    hook = register_optimizer_step_pre_hook(record_norm)
    try:
        out = tmp_path / "out"
        assert train.main(settings(data_dir, out, max_iters=6, grad_clip=grad_clip)) == 0
    finally:
        hook.remove()
    logged = [e["grad_norm"] for e in metrics(out) if "grad_norm" in e]
    assert len(seen) == len(logged) == 6
    assert min(logged) > 0.05  # so clipping at 0.05 changes every step
    if grad_clip:
        assert seen == pytest.approx([grad_clip] * 6, rel=1e-4)
    else:
        assert seen == pytest.approx(logged, rel=1e-5)


def test_resume_takes_the_model_shape_from_the_checkpoint(data_dir, tmp_path, monkeypatch):
    """As in nanoGPT, --init_from=resume --out_dir=X needs no model settings: the checkpoint's
    shape is used (its block_size for the batches too), and the run continues exactly."""
    monkeypatch.chdir(tmp_path)
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    assert train.main(settings(data_dir, straight, max_iters=10)) == 0
    assert train.main(settings(data_dir, pieces, max_iters=5)) == 0
    shape = ("--n_layer", "--n_head", "--n_embd", "--block_size")
    resumed = [arg for arg in settings(data_dir, pieces, max_iters=10, init_from="resume")
               if arg.split("=")[0] not in shape]
    assert train.main(resumed) == 0
    assert_same_training_state(straight / "ckpt.pt", pieces / "ckpt.pt")


def test_nonfinite_loss_skip_in_float16_keeps_going(data_dir, tmp_path, monkeypatch, capsys):
    """float16 uses a GradScaler: a skipped step must still close the scaler's step, or the
    next one fails."""
    monkeypatch.chdir(tmp_path)
    break_training_batches(monkeypatch, (3,), nan_loss)
    out = tmp_path / "fp16"
    assert train.main(settings(data_dir, out, dtype="float16", max_iters=6, nonfinite_loss="skip")) == 0
    assert capsys.readouterr().out.count("step skipped") == 1
    state = load_checkpoint(out / "ckpt.pt")
    assert state["iter_num"] == 6 and all_finite(state)


def test_nan_before_any_checkpoint_says_to_start_again(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = exit_code(train.main, settings(data_dir, tmp_path / "new", learning_rate=1e20, decay_lr=False,
                                          max_iters=100, eval_interval=1000))
    line = one_error_line(capsys, code, "at iteration", "no checkpoint was saved yet", "start again")
    assert "resume" not in line.split("skip")[0]  # nothing to resume


def test_run_that_saves_nothing_says_so(data_dir, tmp_path, monkeypatch, capsys):
    """Iteration 0 is never saved; with always_save_checkpoint=False and no later improvement,
    the run ends without a checkpoint, and says so rather than pointing at one."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "nothing"
    capsys.readouterr()
    assert train.main(settings(data_dir, out, max_iters=0, always_save_checkpoint=False)) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "no checkpoint saved" in last and "always_save_checkpoint" in last
    assert not (out / "ckpt.pt").exists()


def test_resume_may_change_dropout(data_dir, trained_copy, tmp_path, monkeypatch):
    """As in nanoGPT, dropout is a training setting, not part of the model's shape."""
    monkeypatch.chdir(tmp_path)
    out = trained_copy
    start = load_checkpoint(out / "ckpt.pt")
    assert start["model_config"]["dropout"] == 0.1
    assert train.main(settings(data_dir, out, init_from="resume", max_iters=TRAINED["max_iters"] + 2,
                               dropout=0.0)) == 0
    state = load_checkpoint(out / "ckpt.pt")
    assert state["iter_num"] == TRAINED["max_iters"] + 2 and state["model_config"]["dropout"] == 0.0


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_diverged_model_does_not_replace_the_last_good_checkpoint(mode, data_dir, trained_copy, tmp_path,
                                                                  monkeypatch, capsys):
    """A nan evaluation stops the run in either mode: skipping steps cannot mend broken weights."""
    monkeypatch.chdir(tmp_path)
    out = trained_copy
    before = file_hashes(out)
    capsys.readouterr()
    # One step with a finite loss ruins the weights; the evaluation after it has a nan val loss.
    code = exit_code(train.main, settings(data_dir, out, init_from="resume", learning_rate=1e20, decay_lr=False,
                                          max_iters=100, eval_interval=1, nonfinite_loss=mode))
    one_error_line(capsys, code, "at iteration", "untouched")
    assert file_hashes(out)["ckpt.pt"] == before["ckpt.pt"]


# ----------------------------------------------------------------------------- the mistakes table

def mistake(name, make_args, fragments, **kwargs):
    return pytest.param(make_args, fragments, id=name, **kwargs)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")

# make_args(data_dir, trained out_dir, tmp_path) -> train.py's arguments; fragments of the error line
TRAIN_MISTAKES = [
    mistake("unknown setting", lambda d, o, t: settings(d, o) + ["--n_layers=3"], ["unknown setting 'n_layers'"]),
    mistake("wrong type", lambda d, o, t: settings(d, o, learning_rate="fast"), ["learning_rate", "'fast'"]),
    mistake("missing config file", lambda d, o, t: [str(t / "no_such_config.py")] + settings(d, o),
            ["config file not found", "no_such_config.py"]),
    mistake("missing data", lambda d, o, t: settings(d, o, dataset="nodata"), ["no prepared data", "nodata"]),
    mistake("empty val data", lambda d, o, t: settings(d, o, dataset="empty_val"), ["val.bin", "0 tokens"]),
    mistake("empty train data", lambda d, o, t: settings(d, o, dataset="empty_train"), ["train.bin", "0 tokens"]),
    mistake("data shorter than block_size", lambda d, o, t: settings(d, o, dataset="short"),
            ["train.bin", "block_size=16"]),
    mistake("vocab smaller than the data's", lambda d, o, t: settings(d, o, vocab_size=5),
            ["vocab_size=5", "vocabulary"]),
    mistake("cuda without CUDA", lambda d, o, t: settings(d, o, device="cuda"), ["cuda", "CUDA is not available"],
            marks=NO_CUDA),
    mistake("batch_size 0", lambda d, o, t: settings(d, o, batch_size=0), ["batch_size", "at least 1"]),
    mistake("block_size 0", lambda d, o, t: settings(d, o, block_size=0), ["block_size", "at least 1"]),
    mistake("resume a different n_layer", lambda d, o, t: settings(d, o, init_from="resume", n_layer=3),
            ["different model", "n_layer"]),
    mistake("resume a different n_embd", lambda d, o, t: settings(d, o, init_from="resume", n_embd=48),
            ["different model", "n_embd"]),
    mistake("resume a different vocab_size", lambda d, o, t: settings(d, o, init_from="resume", vocab_size=100),
            ["different model", "vocab_size"]),
    mistake("start afresh over an existing run", lambda d, o, t: settings(d, o),
            ["already holds a run", "--init_from=resume"]),
    mistake("model settings that do not fit", lambda d, o, t: settings(d, o, n_head=5),
            ["n_embd", "divisible by n_head"]),
    mistake("resume with another optimizer", lambda d, o, t: settings(d, o, init_from="resume", optimizer="muon"),
            ["trained with optimizer=adamw", "--optimizer=adamw"]),
    mistake("an unknown optimizer", lambda d, o, t: settings(d, o, optimizer="sgd"),
            ["optimizer must be 'adamw' or 'muon'", "'sgd'"]),
    mistake("resume on other data", lambda d, o, t: settings(d, o, init_from="resume", dataset="other"),
            ["other data"]),
    mistake("unknown setting while resuming",
            lambda d, o, t: settings(d, o, init_from="resume") + ["--max_iter=30"], ["unknown setting 'max_iter'"]),
]


@pytest.mark.parametrize("make_args, fragments", TRAIN_MISTAKES)
def test_train_mistake_leaves_the_run_untouched(make_args, fragments, data_dir, trained, tmp_path, monkeypatch,
                                                capsys):
    monkeypatch.chdir(tmp_path)
    before = file_hashes(trained)
    capsys.readouterr()
    code = exit_code(train.main, make_args(data_dir, trained, tmp_path))
    line = one_error_line(capsys, code, *fragments)
    assert file_hashes(trained) == before
    if "different model" in line:  # names only the setting that differs
        others = {"n_layer", "n_head", "n_embd", "vocab_size", "block_size"} - {
            f for f in fragments if f != "different model"}
        assert not any(f"{name}=" in line for name in others), line
    assert not list(tmp_path.glob("*.pt"))


def test_eval_only_after_resume_evaluates_and_changes_nothing(data_dir, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = file_hashes(trained)
    capsys.readouterr()
    assert train.main(settings(data_dir, trained, init_from="resume", eval_only=True)) == 0
    assert "val loss" in capsys.readouterr().out
    assert file_hashes(trained) == before


def test_resume_with_no_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty_out"
    empty.mkdir()
    code = exit_code(train.main, settings(data_dir, empty, init_from="resume"))
    one_error_line(capsys, code, "no checkpoint", str(empty / "ckpt.pt"))
    assert list(empty.iterdir()) == []


def test_unwritable_out_dir(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder\n")
    out = blocker / "out"
    code = exit_code(train.main, settings(data_dir, out))
    one_error_line(capsys, code, "out_dir", str(out))
    assert blocker.read_text() == "a file, not a folder\n"


def corrupt_checkpoint(kind, good):
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "empty file":
        return b""
    if kind == "random bytes":
        return random.Random(7).randbytes(len(good))
    buffer = io.BytesIO()  # a valid torch file, but not a checkpoint
    torch.save({"weights": torch.zeros(3), "iter_num": 5}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("tool", ["train", "sample"])
@pytest.mark.parametrize("kind", ["truncated", "empty file", "random bytes", "not a checkpoint"])
def test_corrupt_checkpoint(kind, tool, data_dir, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(trained / "metrics.jsonl", out)
    (out / "ckpt.pt").write_bytes(corrupt_checkpoint(kind, (trained / "ckpt.pt").read_bytes()))
    before = file_hashes(out)
    capsys.readouterr()
    if tool == "train":
        code = exit_code(train.main, settings(data_dir, out, init_from="resume"))
    else:
        code = exit_code(sample.main, [f"--out_dir={out}", "--device=cpu", "--max_new_tokens=5"])
    line = one_error_line(capsys, code, str(out / "ckpt.pt"))
    assert ("not a checkpoint" if kind == "not a checkpoint" else "corrupt") in line
    assert file_hashes(out) == before


def test_sample_mistakes_on_a_trained_run(data_dir, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = file_hashes(trained)
    vocab = set(read_meta(data_dir / "tiny")["chars"])
    prompt = "Zebra #9~"
    unknown = "".join(sorted(set(prompt) - vocab))
    assert unknown
    cases = [
        ([f"--start={prompt}"], ["outside the model's vocabulary", repr(unknown)]),
        (["--top_p=0"], ["top_p"]),
        (["--top_p=1.5"], ["top_p", "1.5"]),
        (["--temperature=-1"], ["temperature", "-1"]),
        (["--top_k=0"], ["top_k", "0"]),
    ]
    for extra, fragments in cases:
        capsys.readouterr()
        code = exit_code(sample.main, [f"--out_dir={trained}", "--device=cpu", "--max_new_tokens=5", *extra])
        one_error_line(capsys, code, *fragments)
    assert file_hashes(trained) == before


@pytest.mark.parametrize("reported_as", ["OSError", "RuntimeError"])
def test_disk_full_while_saving(reported_as, data_dir, trained_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = trained_copy
    before = file_hashes(out)
    saves = []

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        saves.append(1)
        f.write(b"the first part of a checkpoint" * 1000)
        f.flush()
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            if reported_as == "OSError":
                raise
            # what torch.save raises when a real disk fills up under it
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with monkeypatch.context() as mp:
        mp.setattr(torch, "save", save_on_a_full_disk)
        capsys.readouterr()
        code = exit_code(train.main, settings(data_dir, out, init_from="resume", max_iters=25,
                                              eval_interval=TRAINED["eval_interval"]))
    assert saves  # the run got as far as saving
    one_error_line(capsys, code, "No space left", "--init_from=resume")
    after = file_hashes(out)
    assert after["ckpt.pt"] == before["ckpt.pt"] and after["best.pt"] == before["best.pt"]
    assert set(after) == set(before)  # no temporary file left behind
    # Space freed: the resume the message suggests works, and continues from the old checkpoint.
    assert train.main(settings(data_dir, out, init_from="resume", max_iters=25,
                               eval_interval=TRAINED["eval_interval"])) == 0
    assert load_checkpoint(out / "ckpt.pt")["iter_num"] == 25
    assert [e["iter"] for e in metrics(out) if "loss" in e] == list(range(1, 26))


# ----------------------------------------------------------------------------- safe loading

def _leave_a_mark(path):
    Path(path).write_text("code from a checkpoint ran")
    return {}


class Payload:
    """Unpickled, it calls _leave_a_mark: what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _leave_a_mark, (self.marker,)


def test_checkpoint_with_pickled_code_is_refused_unrun(data_dir, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker.txt"
    state = load_checkpoint(trained / "ckpt.pt")
    state["meta"] = Payload(marker)  # every key a checkpoint needs, one of them a pickled object
    out = tmp_path / "out"
    out.mkdir()
    torch.save(state, out / "ckpt.pt")
    assert not marker.exists()

    with pytest.raises(UserError) as excinfo:
        load_checkpoint(out / "ckpt.pt")
    assert str(out / "ckpt.pt") in str(excinfo.value)
    assert not marker.exists()
    capsys.readouterr()
    code = exit_code(sample.main, [f"--out_dir={out}", "--device=cpu", "--max_new_tokens=5"])
    one_error_line(capsys, code, str(out / "ckpt.pt"))
    code = exit_code(train.main, settings(data_dir, out, init_from="resume"))
    one_error_line(capsys, code, str(out / "ckpt.pt"))
    assert not marker.exists()

    # The file does carry live code: what unpickling it would call leaves the mark.
    function, arguments = Payload(marker).__reduce__()
    function(*arguments)
    assert marker.exists()


@pytest.mark.skipif(not __import__("gptkit.hardware").hardware.cpu_has_bf16(), reason="this CPU has no bfloat16")
@pytest.mark.parametrize("width", [32, 128])
def test_dtype_auto_stopped_and_resumed_equals_the_straight_run(data_dir, tmp_path, capsys, width):
    """dtype auto chooses by a rule on the model and the checkpoint records the choice: 60 steps
    straight and 30 + 30 give the same weights, in float32 (narrow) and bfloat16 (wide) alike."""
    common = dict(dtype="auto", dropout=0.0, n_embd=width, max_iters=60, lr_decay_iters=60, eval_interval=30)
    assert train.main(settings(data_dir, tmp_path / "straight", **common)) == 0
    assert train.main(settings(data_dir, tmp_path / "stopped", **{**common, "max_iters": 30})) == 0
    assert train.main(settings(data_dir, tmp_path / "stopped", **common, init_from="resume")) == 0
    out = capsys.readouterr().out
    chosen = "bfloat16" if width >= 128 else "float32"
    assert f"dtype auto: {chosen} (n_embd {width}" in out and f"dtype auto: {chosen}, as the run was saved" in out
    assert load_checkpoint(tmp_path / "stopped" / "ckpt.pt")["precision"] == {"dtype": chosen, "device_type": "cpu"}
    assert_same_training_state(tmp_path / "straight" / "ckpt.pt", tmp_path / "stopped" / "ckpt.pt")


def test_a_resume_keeps_the_dtype_its_run_was_saved_with(data_dir, tmp_path, capsys):
    """A run saved in bfloat16 resumes in bfloat16 with dtype auto, whatever auto would choose
    now; a dtype set on the command line wins, and the run says what it was saved with."""
    out_dir = tmp_path / "out"
    assert train.main(settings(data_dir, out_dir, dtype="bfloat16", max_iters=10, dropout=0.0)) == 0
    assert train.main(settings(data_dir, out_dir, dtype="auto", max_iters=15, dropout=0.0, init_from="resume")) == 0
    assert "dtype auto: bfloat16, as the run was saved" in capsys.readouterr().out
    assert load_checkpoint(out_dir / "ckpt.pt")["precision"]["dtype"] == "bfloat16"
    assert train.main(settings(data_dir, out_dir, dtype="float32", max_iters=20, dropout=0.0, init_from="resume")) == 0
    assert "dtype float32 as set; the run was saved training in bfloat16" in capsys.readouterr().out
    assert load_checkpoint(out_dir / "ckpt.pt")["precision"]["dtype"] == "float32"
