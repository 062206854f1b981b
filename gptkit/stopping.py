"""Stopping a run cleanly: the first SIGINT or SIGTERM (Ctrl-C, a cluster's pre-emption) asks it
to stop after the current step, with a checkpoint; a second one interrupts at once."""

import signal


class StopRequest:
    """Within `with StopRequest() as stop:`, stop.signal is None until a stop is asked for."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              f"(send it again to stop at once)", flush=True)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
