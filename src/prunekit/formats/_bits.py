"""Bit patterns and bit packing: the numpy plumbing shared by the formats.

Formats work on a tensor's bit patterns (a same-width integer view), so every dtype, ``-0.0`` and
NaN payloads included, round-trips exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import fail

#: the signed integer type that views a dtype's bit patterns, by element size in bytes
_RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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
