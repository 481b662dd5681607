"""Handing freed memory back to the operating system between the block runner's steps.

glibc's ``malloc`` keeps freed chunks below its adaptive mmap threshold (up to 32 MiB) in its
heaps: a block's temporaries (a layer's working copy of its weights, its activations) are freed,
but their pages stay resident, and the masks the next block keeps land between them, so the
resident set grows block after block without any tensor being alive. ``malloc_trim(0)`` returns
the free pages. Elsewhere (macOS, Windows, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):  # no glibc
        return None


def release_freed_memory() -> None:
    """Return the C heap's free pages to the operating system (glibc), else do nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
