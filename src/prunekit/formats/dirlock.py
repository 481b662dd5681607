"""An advisory lock on a checkpoint directory, so that concurrent saves and loads never interleave.

Saves take it exclusively, loads take it shared, while they touch the directory's files. It is a
``flock`` on the directory itself, so it leaves no file behind and a crashed process releases it.
Where ``fcntl`` does not exist (Windows) the lock is a no-op; saves stay atomic, but two
processes saving into one directory there may leave one's header with the other's weights (which
the loader then refuses).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


@contextmanager
def locked(directory: Path, *, shared: bool) -> Iterator[None]:
    """Hold ``directory``'s lock (shared or exclusive) for the body of the ``with`` block."""
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        except OSError as e:  # a file system without locks (some network mounts)
            warnings.warn(
                f"cannot lock {directory} ({e}): saves into it from several processes at once "
                "are not serialised; save from one process (rank 0) only",
                stacklevel=3,
            )
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
