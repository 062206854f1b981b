"""Train a GPT.

    python train.py configs/shakespeare_cpu.py                 # a CPU: a small model in minutes
    python train.py configs/shakespeare.py                     # a GPU: the 10.65M-parameter model
    python train.py configs/shakespeare.py --batch_size=32 --max_iters=2000

Settings: the defaults in gptkit/train_settings.py, then each config file in order, then
--key=value (docs/settings.md). The loop is train() below; setting a run up (device,
precision, data, model, optimizer, resume) is gptkit/training.py's.
"""

import math
import sys
import time

import torch
import torch.nn.functional as F

from gptkit.budget import UNDECIDED, TimeBudget, command_started, deadline, with_max_iters
from gptkit.checkpoint import save_run
from gptkit.distributed import gradient_sync
from gptkit.hardware import synchronize
from gptkit.optim import get_lr, gradient_norm
from gptkit.plots import loss_figure, picture_fonts, save_png
from gptkit.runlog import duration, log, progress
from gptkit.settings import UserError, load_settings, reason, run_cli
from gptkit.stopping import StopRequest
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun


def train(config, started=None):
    """One run: evaluate when due, stop when done or asked, else take a step and log it.
    started: time.perf_counter() at the start of the command, which a time_budget counts from."""
    started = time.perf_counter() if started is None else started
    run = TrainingRun(config)
    try:
        with StopRequest() as stop:
            announce(run)
            budget = TimeBudget(config.time_budget, started, config.warmup_iters, run.iter_num) \
                if run.budget_open else None
            end = deadline(run.config, started)
            first_iter, logged = run.iter_num, Interval()
            bar = progress(total=config.max_iters, initial=run.iter_num, desc="training", unit="iter")
            while True:
                config, it = run.config, run.iter_num  # a time_budget changes max_iters once
                due = it % config.eval_interval == 0 or it == config.max_iters
                if config.eval_only or (due and run.last_eval_iter != it):  # a resumed run has evaluated at `it`
                    evaluate(run)
                if config.eval_only or it >= config.max_iters:
                    break
                # Processes agree on stopping only where they meet anyway (a log line, an evaluation),
                # so a plain step waits on no other process; every process stops at the same step.
                agree = run.procs.world_size == 1 or due or it % config.log_interval == 0
                if agree and run.procs.any(stop.signal is not None):
                    save_run(run)
                    log(f"stopped at iteration {it}; saved {run.out_dir / 'ckpt.pt'}. "
                        f"To continue, run the same command with --init_from=resume")
                    break
                if agree and end and not budget and run.procs.any(end.passed(run.clock.evaluation_seconds())):
                    if run.last_eval_iter != it:
                        evaluate(run)
                    save_run(run)
                    log(f"time_budget {config.time_budget:g} s: stopped at iteration {it:,} of {config.max_iters:,}, "
                        f"the steps having slowed since they were measured; saved {run.out_dir / 'ckpt.pt'}. "
                        f"To finish its schedule, run the same command with --init_from=resume")
                    break
                step_started = time.perf_counter()
                lr = get_lr(config, it)
                train_step(run, lr)
                run.iter_num += 1
                logs = run.iter_num % config.log_interval == 0 or run.iter_num == config.max_iters
                if logs or run.iter_num % config.eval_interval == 0:
                    # A GPU computes after the host has queued: the time of the steps since the last
                    # wait ends when the device is done with them. Between these points it runs ahead.
                    synchronize(run.device)
                seconds = time.perf_counter() - step_started
                logged.add(seconds)
                run.clock.stepped(seconds)
                bar.update()
                if budget and budget.stepped(run.iter_num, seconds):  # the steps are measured: fix max_iters
                    choose_max_iters(run, budget, bar)
                    budget = None
                if logs:
                    log_step(run, lr, logged)
            bar.close()
            run.guard.flush()
            summary(run, run.iter_num - first_iter)
        run.procs.barrier()  # under torchrun: every process is done before any closes its connections
    except torch._dynamo.exc.BackendCompilerFailed as error:  # e.g. no C++ compiler for a CPU
        raise UserError(f"torch.compile failed here ({reason(error, 200)}); run with --compile=False") from None
    finally:
        run.close()
    return run


def choose_max_iters(run, budget, bar):
    """max_iters (and lr_decay_iters, unless set) fixed by the time budget, and said."""
    clock = run.clock
    eval_seconds = (clock.eval_seconds / clock.evals) if clock.evals else 0.0
    try:
        choice = budget.choose(run.iter_num, run.config.eval_interval, eval_seconds)
    except UserError as e:
        choice = e
    choice = run.procs.gather(choice)[0]  # under torchrun, every process takes rank 0's choice
    if isinstance(choice, UserError):
        raise choice
    max_iters, line = choice
    run.config = with_max_iters(run.config, max_iters)
    bar.total = max_iters
    bar.refresh()
    log(line)


def train_step(run, lr):
    """One optimizer step over gradient_accumulation_steps micro-batches, at learning rate lr."""
    config, procs, B, steps = run.config, run.procs, run.config.batch_size, run.micro_steps
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    # The step's windows are drawn at once, the same on every process; each builds its own
    # share, so what a run sees depends on its seed and tokens per step, not on how many
    # processes share them or how the micro-batches split them.
    windows = run.sampler.windows("train", count=B * config.gradient_accumulation_steps,
                                  part=slice(procs.rank * steps * B, (procs.rank + 1) * steps * B))
    x_all, y_all = run.to_device(windows)  # this process's micro-batches, in one copy
    total = torch.zeros((), device=run.device)
    for micro in range(steps):
        x, y = x_all[micro * B : (micro + 1) * B], y_all[micro * B : (micro + 1) * B]
        with gradient_sync(run.step_model, sync=micro == steps - 1):  # gradients are exchanged once
            with run.autocast:
                _, loss = run.step_model(x, y)
            run.scaler.scale(loss / steps).backward()
        total += loss.detach()
    run.scaler.unscale_(run.optimizer)
    norm = gradient_norm(run.model, config.grad_clip)
    taken = (run.iter_num, total / steps, norm)  # still on the device: read back by the guard
    if run.guard.may_step(*taken):
        run.scaler.step(run.optimizer)
    run.scaler.update()  # float16: also after a skipped step, which unscale_ counted (it lowers the scale)
    run.optimizer.zero_grad(set_to_none=True)
    run.guard.deferred(*taken)


@torch.no_grad()
def estimate_loss(run):
    """{split: (mean loss, bits per byte)} over eval_iters batches of each split, the same
    batches every time. Bits per byte: the summed cross-entropy in bits over the UTF-8 bytes of
    text the predicted tokens stand for, which compares models of different vocabularies. Tokens
    that stand for no text (<|endoftext|>, ignored targets) count on neither side."""
    run.model.eval()
    losses, procs = {}, run.procs
    with progress(total=2 * run.config.eval_iters, desc="evaluating", unit="batch") as bar:
        for split in ("train", "val"):
            # summed where they are computed, no wait per batch: loss, then bits and bytes
            total = torch.zeros(3, dtype=torch.float64, device=run.device)
            batches = run.sampler.eval_windows(split, run.config.eval_iters)
            share = batches[procs.rank :: procs.world_size]  # each process its share
            rounds = -(-len(batches) // procs.world_size) if run.sharded else len(share)
            for i in range(rounds):  # FSDP: every process runs as many forwards (each gathers weights)
                x, y = run.to_device(share[i] if i < len(share) else batches[0])
                with run.autocast:
                    logits, _ = run.model(x)
                if i < len(share):  # each target's loss once: its mean, and its bits where it stands for text
                    nats = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction="none")
                    text_bytes = torch.where(y >= 0, run.token_bytes[y.clamp(min=0)], 0).flatten()  # -1: ignored
                    loss = nats.sum() / (y >= 0).sum()
                    bits = (nats.double() * (text_bytes > 0)).sum() / math.log(2)
                    total += torch.stack([loss.double(), bits, text_bytes.sum().double()])
                bar.update(procs.world_size)
            loss, bits, text_bytes = (procs.sum(value) for value in total.tolist())
            losses[split] = (loss / run.config.eval_iters, bits / text_bytes if text_bytes else math.nan)
    run.model.train()
    run.last_eval_iter = run.iter_num
    return losses


def hellaswag_accuracy(run):
    """(acc, acc_norm) on HellaSwag's examples, each process scoring its share."""
    correct, correct_norm, _ = run.hellaswag.count_correct(run.model, run.device, run.autocast, run.hellaswag_forwards)
    return run.procs.sum(correct) / run.hellaswag.total, run.procs.sum(correct_norm) / run.hellaswag.total


def evaluate(run):
    """Estimate the losses (and, when due, HellaSwag's accuracy) and record them; save ckpt.pt
    when val improves (or always, by setting) and best.pt when it improves. Weights whose loss is
    not finite are never saved."""
    run.guard.flush()  # a step that made the weights nan is named as such
    config, it, started = run.config, run.iter_num, time.perf_counter()
    estimates = estimate_loss(run)
    losses = {split: loss for split, (loss, _) in estimates.items()}
    row = {"iter": it, "tokens": it * run.tokens_per_step, "train_loss": losses["train"], "val_loss": losses["val"],
           "train_bpb": estimates["train"][1], "val_bpb": estimates["val"][1]}
    report = f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
    if math.isfinite(estimates["val"][1]):
        report += f" ({estimates['val'][1]:.4f} bits per byte)"
    if run.hellaswag and (config.eval_only or it % config.hellaswag_interval == 0 or it == config.max_iters):
        row["hellaswag_acc"], row["hellaswag_acc_norm"] = hellaswag_accuracy(run)
        report += f", hellaswag acc_norm {row['hellaswag_acc_norm']:.4f} (acc {row['hellaswag_acc']:.4f})"
    run.metrics.record({**row, "elapsed": round(run.clock.elapsed(), 3)})
    if not config.eval_only:
        run.guard.check_evaluation(losses, it)
    improved = losses["val"] < run.best_val_loss
    run.best_val_loss = min(run.best_val_loss, losses["val"])
    if it > 0 and not config.eval_only and (improved or config.always_save_checkpoint):
        save_run(run, best=improved)
        report += "; saved ckpt.pt and best.pt" if improved else "; saved ckpt.pt"
    if not config.eval_only and run.procs.master:
        draw_loss_plot(run)
    log(report)
    run.clock.evaluated(time.perf_counter() - started)


def draw_loss_plot(run):
    """out_dir/loss.png from metrics.jsonl's rows; a failure to draw never stops training."""
    try:
        with picture_fonts():  # an out_dir named in any language
            save_png(loss_figure(run.metrics.rows, title=str(run.out_dir)), run.out_dir / "loss.png")
    except OSError as e:
        log(f"could not write {run.out_dir / 'loss.png'}: {e.strerror}")


class Interval:
    """The steps since the last log line and the seconds they took."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.steps, self.seconds = 0, 0.0

    def add(self, seconds):
        self.steps, self.seconds = self.steps + 1, self.seconds + seconds


def log_step(run, lr, interval):
    """The log line and metrics row of the steps since the last one; interval starts again."""
    run.guard.flush()
    config, clock = run.config, run.clock
    loss = run.procs.sum(run.guard.last_loss) / run.procs.world_size  # the mean over processes
    speed = run.tokens_per_step * interval.steps / interval.seconds
    mfu = run.mfu(speed)
    open_ended = config.max_iters == UNDECIDED  # a time_budget has yet to choose it
    log(f"iter {run.iter_num}/{'?' if open_ended else config.max_iters}: loss {loss:.4f}, lr {lr:.2e}, "
        f"{1000 * interval.seconds / interval.steps:.1f} ms/iter, {speed:,.0f} tok/s, "
        + (f"mfu {100 * mfu:.1f}%, " if mfu is not None else "")
        + f"{duration(clock.elapsed())} elapsed, {'?' if open_ended else duration(clock.left(run.iter_num, config))} left")
    run.metrics.record({"iter": run.iter_num, "tokens": run.iter_num * run.tokens_per_step,
                        "loss": loss, "lr": lr, "grad_norm": run.guard.last_norm,
                        "tokens_per_sec": round(speed, 1), "mfu": None if mfu is None else round(mfu, 5),
                        "elapsed": round(clock.elapsed(), 3)})
    interval.reset()


def announce(run):
    config = run.config
    print(f"model: {run.model.num_params() / 1e6:.2f}M parameters, {config.n_layer} layers, "
          f"{config.n_head} heads, {config.n_embd} wide, context {config.block_size}")
    processes = f", {run.procs.world_size} processes" if run.procs.world_size > 1 else ""
    compiled = "compiled" if config.compile else "not compiled"
    compiled += " (compile auto: on for CUDA only)" if run.compile_chosen else ""
    print(f"device {run.device}{processes}, dtype {run.dtype}, {compiled}; {run.tokens_per_step:,} tokens per step "
          f"({config.gradient_accumulation_steps} x {config.batch_size} x {config.block_size})")
    print(f"mfu against {run.peak_source}" if run.peak else run.peak_source)
    if run.hellaswag:
        print(f"hellaswag: {run.hellaswag.total:,} examples every {config.hellaswag_interval} iterations")


def summary(run, steps):
    """The closing lines: best val loss, where the checkpoints are, time, tokens and speed."""
    if run.config.eval_only:
        print(f"val loss {run.best_val_loss:.4f} (eval_only: nothing written)")
    elif (run.out_dir / "ckpt.pt").is_file():
        print(f"best val loss {run.best_val_loss:.4f}; checkpoints in {run.out_dir}")
    else:  # iteration 0 is never saved, and with always_save_checkpoint=False only a better val loss is
        print(f"best val loss {run.best_val_loss:.4f}; no checkpoint saved: none is written at iteration 0, "
              f"and with always_save_checkpoint=False only when val loss improves on its best")
    if steps:
        tokens, clock = steps * run.tokens_per_step, run.clock
        print(f"{steps:,} iterations, {tokens:,} tokens in {duration(clock.session())} "
              f"({tokens / clock.step_seconds:,.0f} tok/s while stepping); the run so far: "
              f"{run.iter_num * run.tokens_per_step:,} tokens in {duration(clock.elapsed())}")
    if run.device_type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(run.device) / 2**30:.2f} GiB (allocated by tensors)")


def main(argv=None, started=None):
    """started: time.perf_counter() at the start of the command (default: now)."""
    started = time.perf_counter() if started is None else started
    return run_cli(lambda args: train(load_settings(TrainConfig, args), started), argv)


if __name__ == "__main__":
    sys.exit(main(started=command_started()))
