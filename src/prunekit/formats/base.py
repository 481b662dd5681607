"""The format contract: how one tensor is stored, and the helpers every format shares.

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

import numpy as np
import torch

from ..errors import CheckpointError
from ..registry import Registry

FORMATS: Registry[type[Format]] = Registry("format")

#: dtypes a checkpoint may hold, by the name written in ``prunekit.json``
DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
        torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2,
    )
}  # fmt: skip

#: the signed integer type that views a dtype's bit patterns, by element size in bytes
_RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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
    def decode(
        self,
        parts: dict[str, torch.Tensor],
        meta: dict[str, Any],
        shape: tuple[int, ...],
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The tensor back, bit-exact; raise :class:`CheckpointError` for inconsistent input."""


def fail(msg: str) -> CheckpointError:
    return CheckpointError(f"corrupt checkpoint: {msg}")


# ---- bit patterns ------------------------------------------------------------------------------


def raw(t: torch.Tensor) -> np.ndarray:
    """The flattened bit patterns of ``t`` as a numpy integer array (``[numel]``)."""
    return t.detach().cpu().contiguous().reshape(-1).view(_RAW[t.element_size()]).numpy()


def from_raw(a: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`raw`."""
    return torch.from_numpy(np.ascontiguousarray(a)).view(dtype).reshape(shape)


def raw_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=_RAW[torch.empty((), dtype=dtype).element_size()]).numpy().dtype


def values_tensor(r: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Bit patterns ``[nnz]`` as a 1-D tensor of ``dtype`` (the stored non-zero values)."""
    return from_raw(r, dtype, (r.size,))


def nonzeros(t: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Flat positions of the non-zero bit patterns of ``t`` (``[nnz]`` int64) and their values."""
    r = raw(t)
    pos = np.flatnonzero(r)
    return pos, values_tensor(r[pos], t.dtype)


def scatter(
    numel: int,
    positions: np.ndarray,
    values: torch.Tensor,
    dtype: torch.dtype,
    shape: tuple[int, ...],
) -> torch.Tensor:
    """A tensor of ``shape`` that is zero except ``values`` at flat ``positions`` (checked)."""
    out = np.zeros(numel, dtype=raw_dtype(dtype))
    out[positions] = raw(values)
    return from_raw(out, dtype, shape)


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


def pack_bits(bits: np.ndarray) -> torch.Tensor:
    """A 0/1 array packed 8 per byte, most significant bit first (``[ceil(n/8)]`` uint8)."""
    return torch.from_numpy(np.packbits(bits.astype(np.uint8, copy=False)))


def unpack_bits(packed: torch.Tensor, nbits: int, what: str) -> np.ndarray:
    """Exactly ``nbits`` bits back from ``packed``; its length and zero padding are checked."""
    if packed.numel() != (nbits + 7) // 8:
        raise fail(f"{what} holds {packed.numel()} bytes, expected {(nbits + 7) // 8}")
    bits = np.unpackbits(packed.numpy())
    if bits[nbits:].any():
        raise fail(f"{what} has non-zero padding bits")
    return bits[:nbits]


def pack_uint(x: np.ndarray, width: int) -> torch.Tensor:
    """Non-negative integers ``[n]``, each in ``width`` bits, packed (``[ceil(n*width/8)]``)."""
    bits = np.empty((x.size, width), dtype=np.uint8)  # [n, width], most significant bit first
    for j in range(width):
        bits[:, j] = (x >> (width - 1 - j)) & 1
    return pack_bits(bits.reshape(-1))


def unpack_uint(packed: torch.Tensor, count: int, width: int, what: str) -> np.ndarray:
    """The inverse of :func:`pack_uint`: ``count`` integers of ``width`` bits (int64)."""
    bits = unpack_bits(packed, count * width, what).reshape(count, width)
    out = np.zeros(count, dtype=np.int64)
    for j in range(width):
        out <<= 1
        out |= bits[:, j]
    return out


# ---- sizes -------------------------------------------------------------------------------------


def entropy_limit_bits(numel: int, nnz: int, value_bits: int) -> float:
    """The information-theoretic size of a sparse tensor: ``n·H(density) + nnz·value_bits``."""
    if numel == 0:
        return 0.0
    p = nnz / numel
    h = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    return numel * h + nnz * value_bits
