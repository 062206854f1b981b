"""What a user sees while waiting: a live progress line in a terminal, nothing in a log file."""

import os
import sys

from tqdm import tqdm


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
