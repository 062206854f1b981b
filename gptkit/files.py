"""Files that must never be left half-written: a crash at any moment leaves the old file or
the new one, whole."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def plain_mode():
    """The mode a plain open() gives a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path, mode="wb"):
    """Yield a temporary file beside path; when the block ends without error, flush it to
    disk and rename it over path. A crash at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), plain_mode())  # not mkstemp's 0600
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        Path(tmp).unlink(missing_ok=True)
