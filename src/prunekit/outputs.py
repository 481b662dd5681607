"""A model's inputs and outputs as nests of tensors: their leaves, a copy with every tensor
mapped, and how far two models' outputs are apart.

Shared by the stages that move batches (``calibrate``), cut example inputs and check one model
against another (``structure.shrink``, ``runtime.fuse``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import VerificationError


def flatten(value: Any) -> list[Any]:
    """Leaves of tuples, lists, dicts and Hugging Face ``ModelOutput``; other objects (a KV
    cache, for instance) are leaves themselves and hold no interface tensors."""
    if isinstance(value, dict):  # ModelOutput is a dict
        return [leaf for v in value.values() for leaf in flatten(v)]
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in flatten(v)]
    return [value]


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with every tensor inside its tuples, lists and dicts replaced by ``fn(t)``; a
    named tuple, like any other object, is a leaf and stays as it is."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(map_tensors(v, fn) for v in value)
    if isinstance(value, list):
        return [map_tensors(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


def max_rel_error(ref: Any, out: Any) -> float:
    """max |a - b| / max |a| over the floating-point output tensors, in float64 (caches
    excluded). Outputs of another structure or shape raise
    :class:`~prunekit.errors.VerificationError` naming both."""
    a = [t for t in flatten(ref) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    b = [t for t in flatten(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        raise VerificationError(
            "the two models' outputs differ in structure or shape: "
            f"{[tuple(x.shape) for x in a]} vs {[tuple(y.shape) for y in b]}"
        )
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = x.detach().double(), y.detach().double()
        scale = x.abs().max().clamp_min(1e-12)
        worst = max(worst, float((x - y).abs().max() / scale))
    return worst
