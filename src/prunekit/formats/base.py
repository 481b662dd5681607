"""The format contract: how one tensor is stored, and the checks every decoder shares.

A format turns a tensor into named *parts* (plain tensors that go into safetensors) plus a small
JSON-able ``meta`` dict, and back. Decoding is bit-exact. Formats compare *bit patterns* with zero,
so ``-0.0`` and NaN payloads survive a round trip (the checkpoint writer turns ``-0.0`` into
``+0.0`` first, so that pruned weights compress).

``decode`` treats every part and meta field as untrusted: it checks dtypes, lengths, ranges and
counts, and raises :class:`~prunekit.errors.CheckpointError` for anything inconsistent.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import CheckpointError
from ..registry import Registry

FORMATS: Registry[type[Format]] = Registry("format")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``, as checkpoints write it."""
    return str(dtype).removeprefix("torch.")


#: dtypes a checkpoint may hold, by the name written in ``prunekit.json``
DTYPES: dict[str, torch.dtype] = {
    dtype_name(d): d
    for d in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
        torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2,
    )
}  # fmt: skip


Parts = dict[str, torch.Tensor]
Meta = dict[str, Any]
Shape = tuple[int, ...]


@dataclass
class Encoded:
    """One encoded tensor: its parts (named tensors) and JSON-able metadata."""

    parts: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parts.values())


class Format(ABC):
    """One storage format. Subclasses register with ``@FORMATS.register(name)``."""

    #: the part names this format writes; ``""`` stores the part under the tensor's own name
    part_names: ClassVar[tuple[str, ...]]

    @abstractmethod
    def encode(self, t: torch.Tensor) -> Encoded | None:
        """Encode a contiguous CPU tensor; None when this format cannot hold it."""

    @abstractmethod
    def decode(self, parts: Parts, meta: Meta, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        """The tensor back, bit-exact; raise :class:`CheckpointError` for inconsistent input."""


def fail(msg: str) -> CheckpointError:
    return CheckpointError(f"corrupt checkpoint: {msg}")


# ---- checked access to untrusted parts ---------------------------------------------------------


def part(
    parts: dict[str, torch.Tensor], name: str, dtype: torch.dtype, length: int | None = None
) -> torch.Tensor:
    """Part ``name``: present, 1-D, of ``dtype`` and (if given) ``length`` elements."""
    t = parts.get(name)
    if t is None:
        raise fail(f"part {name!r} is missing")
    if t.dtype != dtype or t.dim() != 1:
        raise fail(f"part {name!r} is {t.dtype} {tuple(t.shape)}, expected 1-D {dtype}")
    if length is not None and t.numel() != length:
        raise fail(f"part {name!r} has {t.numel()} elements, expected {length}")
    return t


def meta_int(meta: dict[str, Any], key: str, lo: int, hi: int) -> int:
    """Integer ``meta[key]`` in ``[lo, hi]``."""
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise fail(f"meta {key!r} = {v!r} is not an integer in [{lo}, {hi}]")
    return v


def check_keys(meta: dict[str, Any], allowed: Iterable[str]) -> None:
    extra = set(meta) - set(allowed)
    if extra:
        raise fail(f"unknown meta keys {sorted(extra)}")


# ---- sizes -------------------------------------------------------------------------------------


def entropy_limit_bits(numel: int, nnz: int, value_bits: int) -> float:
    """The information-theoretic size of a sparse tensor: ``n·H(density) + nnz·value_bits``."""
    if numel == 0:
        return 0.0
    p = nnz / numel
    h = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    return numel * h + nnz * value_bits
