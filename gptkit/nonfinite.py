"""The one policy for nan and inf. A training step's loss or gradient that is not finite stops
the run without saving (a UserError), unless nonfinite_loss='skip': then the step is skipped.
A non-finite evaluation always stops it: averaged over many batches, it means the weights
themselves are broken, which skipping steps cannot mend.

Reading a step's loss back to the host makes a GPU wait, so with 'stop' a step is checked
once the next one is queued (a bad step stops the run without saving, so its check can wait),
from a copy made without waiting (hardware.ReadBack): the host waits for that step alone, and
the GPU goes on with the next.
With 'skip', or float16's loss scaling (which reads the gradients back anyway), a step is
checked before the optimizer takes it, so that a bad one leaves the weights as they were."""

import math

from gptkit.checkpoint import how_to_go_on
from gptkit.hardware import ReadBack
from gptkit.runlog import log
from gptkit.settings import UserError


class NonfiniteGuard:
    """Checks each step's (iteration, loss, gradient norm), now or one step later. The last
    checked loss (this process's) and norm are kept for the log line."""

    def __init__(self, mode, scaler, out_dir, device_type="cpu"):
        self.mode, self.scaler, self.out_dir, self.device_type = mode, scaler, out_dir, device_type
        self.pending = None  # a step taken but not yet read back from the device
        self.last_loss = self.last_norm = None

    @property
    def checks_first(self):
        """With 'skip', or float16's scaler (which reads the gradients back anyway), a step is
        checked before the optimizer takes it."""
        return self.mode == "skip" or self.scaler.is_enabled()

    def may_step(self, it, loss, norm):
        """Whether the optimizer may take this step: checked now if checks_first, else taken,
        and checked by deferred() once the next step is queued."""
        return self.check(it, loss, norm) is None if self.checks_first else True

    def deferred(self, it, loss, norm):
        """After a step was taken unchecked: keep it, and check the one before it."""
        if self.checks_first:
            return
        previous, self.pending = self.pending, (it, ReadBack(self.device_type, loss, norm))
        if previous is not None:
            self.check(previous[0], *previous[1].values())

    def flush(self):
        """Check the step still waiting, if there is one: before a log line, an evaluation, a
        save, and at the end."""
        if self.pending is not None:
            (it, read_back), self.pending = self.pending, None
            self.check(it, *read_back.values())

    def check(self, it, loss, norm):
        """Read a step's loss and gradient norm back to the host; returns what was wrong, or None.
        A problem stops the run, or with 'skip' is logged. No process waits on another here: the
        norm is of the gradients every process shares, and a nan or inf loss on one process makes
        them nan or inf on all, so all come to the same decision."""
        self.last_loss = loss = float(loss)
        self.last_norm = norm = float(norm)
        # float16: an inf gradient means the loss scale is too high; the scaler skips that step
        # and lowers the scale, routine and not the run's problem.
        problem = (f"the loss is {loss}" if not math.isfinite(loss) else
                   f"the gradient norm is {norm}" if not math.isfinite(norm) and not self.scaler.is_enabled()
                   else None)
        if problem and self.mode == "skip":
            log(f"iter {it}: {problem}; step skipped (nonfinite_loss='skip')")
        elif problem:
            raise UserError(f"{problem} at iteration {it}; stopped without saving: "
                            + how_to_go_on(self.out_dir, "lower learning_rate")
                            + ", or set nonfinite_loss='skip' to go on past such steps")
        return problem

    def check_evaluation(self, losses, it):
        if not all(map(math.isfinite, losses.values())):
            raise UserError(f"the evaluated loss is {losses['train']} (train), {losses['val']} (val) at iteration "
                            f"{it} (the model's weights no longer give a finite loss); stopped without saving: "
                            + how_to_go_on(self.out_dir, "lower learning_rate"))
