"""``nm``: N:M packed. Every group of M consecutive weights along the last dimension keeps
exactly N slots: their values and their in-group indices (``ceil(log2 M)`` bits each, so 2 bits
per kept value for 2:4). Groups with fewer than N non-zeros pad with zero-valued slots.

The checkpoint writer lays weights out with the input dimension last (``Target.to_matrix``), so
groups here are the groups the N:M granularity pruned.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .base import (
    FORMATS,
    Encoded,
    Format,
    check_keys,
    fail,
    from_raw,
    meta_int,
    pack_uint,
    part,
    raw,
    raw_dtype,
    unpack_uint,
    values_tensor,
)

#: group sizes tried by the encoder
GROUP_SIZES = (4, 8, 16)
MAX_M = 256


def index_bits(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


@FORMATS.register("nm")
class NMPacked(Format):
    part_names = ("index", "values")

    def encode(self, t: torch.Tensor) -> Encoded | None:
        if t.dim() == 0 or t.numel() == 0:
            return None
        r = raw(t)
        best = None
        vbits = 8 * t.element_size()
        for m in GROUP_SIZES:
            if t.shape[-1] % m:
                continue
            n = max(int((r.reshape(-1, m) != 0).sum(1).max()), 1)  # groups [numel/M, M]
            if n < m and (best is None or n * (vbits + index_bits(m)) / m < best[2]):
                best = (n, m, n * (vbits + index_bits(m)) / m)
        if best is None:
            return None
        n, m, _ = best
        groups = r.reshape(-1, m)  # [G, M]
        # non-zeros first (stable), then the earliest zeros as padding; slots in index order
        idx = np.sort(np.argsort(groups == 0, axis=1, kind="stable")[:, :n], axis=1)  # [G, N]
        vals = np.take_along_axis(groups, idx, axis=1).reshape(-1)
        return Encoded(
            {
                "index": pack_uint(idx.reshape(-1), index_bits(m)),
                "values": values_tensor(vals, t.dtype),
            },
            {"n": n, "m": m},
        )

    def decode(
        self,
        parts: dict[str, torch.Tensor],
        meta: dict[str, Any],
        shape: tuple[int, ...],
        dtype: torch.dtype,
    ) -> torch.Tensor:
        check_keys(meta, ("n", "m"))
        m = meta_int(meta, "m", 2, MAX_M)
        n = meta_int(meta, "n", 1, m - 1)
        if not shape or shape[-1] % m:
            raise fail(f"nm: last dimension of {shape} is not a multiple of M={m}")
        groups = math.prod(shape) // m
        values = part(parts, "values", dtype, groups * n)
        idx = unpack_uint(part(parts, "index", torch.uint8), groups * n, index_bits(m), "nm index")
        idx = idx.reshape(groups, n)  # [G, N]
        if (idx >= m).any() or (np.diff(idx, axis=1) <= 0).any():
            raise fail("nm in-group indices are out of range or not strictly increasing")
        out = np.zeros((groups, m), dtype=raw_dtype(dtype))
        np.put_along_axis(out, idx, raw(values).reshape(groups, n), axis=1)
        return from_raw(out, dtype, shape)
