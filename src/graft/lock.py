"""Directory locks: one process at a time changes a rounds project or trains into a run directory.

An exclusive `flock` on DIR/.lock, taken without waiting: a second command gets a one-line GraftError naming the
holder's process id instead of interleaving its writes with the first one's (two `graft train --resume` on one run
wrote every epoch twice into metrics.jsonl). The kernel drops the lock when the holder exits, however it exits, so
a killed run never leaves a stale lock behind. No locking where `fcntl` is missing (Windows).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from graft.errors import GraftError

LOCK = ".lock"


@contextlib.contextmanager
def locked(directory: str | Path, busy: str) -> Iterator[None]:
    """Hold DIR/.lock (DIR is created) for the block; when another process holds it, GraftError(`busy` with
    `{directory}` and `{pid}` filled in)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    with open(Path(directory) / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise GraftError(busy.format(directory=directory, pid=holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(directory: str | Path) -> bool:
    """Whether some process (this one included) holds DIR/.lock now; False where there is no lock file."""
    try:
        import fcntl
    except ImportError:
        return False
    path = Path(directory) / LOCK
    try:
        handle = open(path)  # noqa: SIM115 (closed below, on every path)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
    finally:
        handle.close()
