"""``nm``: N:M packed. Every group of M consecutive weights along the last dimension keeps
exactly N slots: their values, and which N of the M positions they occupy.

The positions are stored as the rank of the group's N-of-M pattern among all ``C(M, N)`` patterns,
in ``ceil(log2 C(M, N))`` bits per group: 3 bits per group of 4 for 2:4 (0.75 bits per weight,
below the 2 bits per kept value of per-slot indices). Groups with fewer than N non-zeros pad with
zero-valued slots.

The checkpoint writer lays weights out with the input dimension last (``Target.to_matrix``), so
groups here are the groups the N:M granularity pruned.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from ._bits import from_raw, pack_uint, raw, raw_dtype, unpack_uint, values_tensor
from .base import FORMATS, Encoded, Format, Meta, Parts, Shape, check_keys, fail, meta_int, part

#: group sizes tried by the encoder (patterns are ranked through a table of 2**M entries)
GROUP_SIZES = (4, 8, 16)


@cache
def patterns(n: int, m: int) -> np.ndarray:
    """Every M-bit group mask with N bits set, ascending; a pattern's rank is its index."""
    masks = np.arange(1 << m, dtype=np.int64)
    popcount = ((masks[:, None] >> np.arange(m)) & 1).sum(1)  # [2**M]
    return masks[popcount == n]


@cache
def pattern_ranks(n: int, m: int) -> np.ndarray:
    """The inverse of :func:`patterns`: rank by group mask (``[2**M]``, -1 where not N set)."""
    ranks = np.full(1 << m, -1, dtype=np.int64)
    ranks[patterns(n, m)] = np.arange(math.comb(m, n))
    return ranks


def group_masks(keep: np.ndarray) -> np.ndarray:
    """Boolean groups ``[G, M]`` (M <= 16) as integers, bit j set for position j (``[G]``)."""
    packed = np.packbits(keep, axis=1, bitorder="little")  # [G, ceil(M/8)]
    out = packed[:, 0].astype(np.int64)
    if packed.shape[1] > 1:
        out |= packed[:, 1].astype(np.int64) << 8
    return out


def rank_bits(n: int, m: int) -> int:
    return max(1, math.ceil(math.log2(math.comb(m, n))))


def _bits_per_weight(n: int, m: int, value_bits: int) -> float:
    return (n * value_bits + rank_bits(n, m)) / m


@FORMATS.register("nm", examples=("2:4", "1:4"))  # tensor patterns it stores
class NMPacked(Format):
    part_names = ("index", "values")

    def encode(self, t: torch.Tensor) -> Encoded | None:
        if t.dim() == 0 or t.numel() == 0:
            return None
        r = raw(t)
        nz = r != 0
        vbits = 8 * t.element_size()
        fits = []
        for m in GROUP_SIZES:
            if t.shape[-1] % m == 0:
                n = max(int(nz.reshape(-1, m).sum(1, dtype=np.int8).max()), 1)  # [numel/M, M]
                if n < m:
                    fits.append((_bits_per_weight(n, m, vbits), n, m))
        if not fits:
            return None
        _, n, m = min(fits)
        nonzero = nz.reshape(-1, m)  # [G, M]
        # pad groups with fewer than N non-zeros with their earliest zeros
        room = n - nonzero.sum(1, keepdims=True, dtype=np.int8)  # [G, 1]
        keep = nonzero | (np.cumsum(~nonzero, axis=1, dtype=np.int8) <= room)  # N set per row
        mask = group_masks(keep)  # [G] the group's pattern
        rank = pattern_ranks(n, m)[mask]
        vals = r.reshape(-1, m)[keep]  # [G*N], each group's slots in position order
        return Encoded(
            {"index": pack_uint(rank, rank_bits(n, m)), "values": values_tensor(vals, t.dtype)},
            {"n": n, "m": m},
        )

    def decode(self, parts: Parts, meta: Meta, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        check_keys(meta, ("n", "m"))
        m = meta_int(meta, "m", 2, max(GROUP_SIZES))
        n = meta_int(meta, "n", 1, m - 1)
        if not shape or shape[-1] % m:
            raise fail(f"nm: last dimension of {shape} is not a multiple of M={m}")
        groups = math.prod(shape) // m
        values = part(parts, "values", dtype, groups * n)
        rank = unpack_uint(part(parts, "index", torch.uint8), groups, rank_bits(n, m), "nm index")
        table = patterns(n, m)
        if (rank >= table.size).any():
            raise fail(f"nm pattern ranks exceed the {table.size} patterns of {n}:{m}")
        keep = np.unpackbits(  # [G, M], N set per row
            table[rank].astype("<u2").view(np.uint8).reshape(groups, 2),
            axis=1,
            count=m,
            bitorder="little",
        ).astype(bool)
        out = np.zeros((groups, m), dtype=raw_dtype(dtype))
        out[keep] = raw(values)  # row-major: each group's slots in position order
        return from_raw(out, dtype, shape)
