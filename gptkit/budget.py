"""time_budget: a run sized to the seconds it is given. The run starts with its number of steps
open, measures its steps once they are warm (compiled, past the first ones), and before the
learning-rate schedule first depends on it (the end of warm-up) fixes max_iters to what fits the
budget, counting the evaluations still to come. Under a budget lr_decay_iters follows max_iters
unless it is set. The choice is printed with the --max_iters=N that repeats the run exactly, and
a checkpoint records it, so a resumed run keeps the same schedule. Should the machine slow after
the choice, the run stops at the end of its budget, and a resume finishes it. A max_iters that is
set means what it says, and the budget is not used."""

import math
import os
import statistics
import time

from gptkit.settings import UserError
from gptkit.train_settings import given_settings, with_settings

UNDECIDED = 10**9  # max_iters and lr_decay_iters until the budget fixes them
MAX_MEASURED = 100  # steps measured at most, before the choice
LEAST_WARMUP = 10  # steps of warm-up the measurement needs: the first ones compile and warm caches


class TimeBudget:
    """Chooses max_iters for `seconds` of wall time from `started` (time.perf_counter() at the start
    of the command): compiling, evaluations and saves included."""

    def __init__(self, seconds, started, warmup_iters, first_iter):
        self.seconds, self.started = seconds, started
        self.decide_at = first_iter + min(warmup_iters - first_iter, MAX_MEASURED)
        self.measure_from = first_iter + max(2, (self.decide_at - first_iter) // 3)  # after compiling
        self.step_seconds = []

    def stepped(self, iter_num, seconds):
        """Record the step that has just brought the run to iter_num; True when the choice is due."""
        if iter_num > self.measure_from:
            self.step_seconds.append(seconds)
        return iter_num >= self.decide_at

    def choose(self, iter_num, eval_interval, eval_seconds):
        """(max_iters, the line that says so): the most steps whose time, with the evaluations to
        come (each eval_seconds), fits what is left of the budget less 5% (a shared machine's steps
        vary over a run, docs/performance.md#the-cpu-speedrun, and the end writes a checkpoint); rounded down to 2
        significant digits, so that a little noise in the measurement does not change it."""
        step = statistics.median(self.step_seconds)
        elapsed = time.perf_counter() - self.started
        left = 0.95 * self.seconds - elapsed
        total = iter_num
        for _ in range(5):  # the evaluations to come depend on the steps, which depend on them
            evaluations = total // eval_interval - iter_num // eval_interval + (total % eval_interval != 0)
            total = iter_num + max(0, math.floor((left - evaluations * eval_seconds) / step))
        digits = 10 ** max(len(str(total)) - 2, 0)
        total = total // digits * digits
        if total <= iter_num:
            raise UserError(f"time_budget={self.seconds:g} s leaves no time to train after the {iter_num} warm-up steps "
                            f"({elapsed:.0f} s so far, {1000 * step:.1f} ms a step, {eval_seconds:.1f} s an "
                            f"evaluation); give it more seconds, or set max_iters instead")
        return total, (f"time_budget {self.seconds:g} s: {total:,} iterations ({1000 * step:.1f} ms a step over "
                       f"steps {self.measure_from + 1}-{iter_num}, {eval_seconds:.1f} s an evaluation, {elapsed:.0f} s "
                       f"gone); --max_iters={total} repeats this run exactly")


def budgeted(config, saved):
    """(settings, whether the budget is still to choose max_iters): max_iters open (UNDECIDED) for a
    run under a time_budget that does not set it, or, resuming, the max_iters its checkpoint
    recorded (chosen by a budget or set: a resumed run keeps its schedule)."""
    if not config.time_budget or config.eval_only:
        return config, False
    if "max_iters" in given_settings(config):  # it means what it says
        return with_max_iters(config, config.max_iters), False
    saved_config = (saved or {}).get("train_config", {})
    recorded = saved_config.get("max_iters", UNDECIDED)
    if recorded != UNDECIDED:
        how = "as chosen when the run started" if saved_config.get("time_budget") else "as the run was saved with"
        print(f"time_budget: {recorded:,} iterations, {how}")
        lr_decay_iters = saved_config.get("lr_decay_iters", decay_iters(recorded, config))
        return with_settings(config, max_iters=recorded, lr_decay_iters=lr_decay_iters), False
    if config.warmup_iters < LEAST_WARMUP:
        raise UserError(f"time_budget measures the steps during warm-up, before the learning rate depends on "
                        f"max_iters, and needs warmup_iters of at least {LEAST_WARMUP} (it is {config.warmup_iters}); "
                        f"raise it, or set max_iters instead")
    if saved and saved["iter_num"] >= config.warmup_iters:
        raise UserError(f"{saved['iter_num']} iterations into this run its warm-up is over and its checkpoint "
                        f"records no max_iters for time_budget to keep; resume with --max_iters=N")
    return with_max_iters(config, UNDECIDED), True


class Deadline:
    """The end of a run sized by its time_budget (its max_iters not given): the command stops
    there, its schedule finished or not, where the machine slowed after its steps were measured
    (a VM's busy host, a laptop's heat). A resume finishes the schedule."""

    def __init__(self, config, started):
        self.at = started + config.time_budget

    def passed(self, eval_seconds):
        """True once an evaluation (eval_seconds) from now would end past the budget."""
        return time.perf_counter() + eval_seconds >= self.at


def deadline(config, started):
    """The Deadline of a run sized by its time_budget, else None (no budget, or max_iters given)."""
    if not config.time_budget or config.eval_only or "max_iters" in given_settings(config):
        return None
    return Deadline(config, started)


def with_max_iters(config, max_iters):
    """config with max_iters, and lr_decay_iters following it unless set (the decay ends with the run)."""
    follows = {} if "lr_decay_iters" in given_settings(config) else {"lr_decay_iters": decay_iters(max_iters, config)}
    return with_settings(config, max_iters=max_iters, **follows)


def command_started():
    """time.perf_counter()'s reading when this process started (Linux, from /proc), else now."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.perf_counter() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter()


def decay_iters(max_iters, config):
    """lr_decay_iters that follows max_iters (a run shorter than its warm-up never decays)."""
    return max(max_iters, config.warmup_iters + 1)
