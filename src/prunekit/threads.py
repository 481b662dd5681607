"""Run a stretch of code with a given number of torch intra-op threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block, then restore the previous setting.

    Many small ops (group bookkeeping, SparseGPT's column loop, a tiny CNN) run faster on one
    thread: waking a thread pool for each op costs more than the op, badly so on a busy machine.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
