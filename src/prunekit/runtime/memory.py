"""Resident weight memory: what a model's parameters and buffers really occupy."""

from __future__ import annotations

from itertools import chain

from torch import nn


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers, each storage counted once.

    Counts whole storages, so a view that keeps a large tensor alive is charged for all of it;
    for a sparse-kernel module this is its packed arrays plus its bias.
    """
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in chain(model.parameters(), model.buffers()):
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key in seen or storage.data_ptr() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total
