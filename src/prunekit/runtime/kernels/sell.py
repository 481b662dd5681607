"""``prunekit_sell``: SELL-16, rows permuted by length and sliced for 16-wide SIMD (compiled).

"Permuted arrays are key": rows are sorted by non-zero count and cut into slices of 16; each slice
is stored column-major and padded to its longest row, so one AVX-512 gather-FMA serves 16 rows
and no per-row reduction or tail remains. That matters most where rows are short (high sparsity,
narrow layers) at batch 1. Inputs up to 65,536 wide (uint16 columns). Source: ``sell.cpp``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from pathlib import Path

import torch

from ...errors import ConfigError
from ._build import CompiledKernel, library_function
from .base import KERNELS
from .torch_csr import csr_parts

SOURCE = Path(__file__).with_name("sell.cpp")
LANES = 16
#: (out, n, slice_ptr, perm, col, values, x, bias, y, threads)
ARGTYPES = (ctypes.c_int64, ctypes.c_int64, *[ctypes.c_void_p] * 7, ctypes.c_int)


def _function():
    return library_function(SOURCE, "pk_sell16", ARGTYPES)


@KERNELS.register("prunekit_sell", examples=("unstructured:0.5", "unstructured:0.9"))
class PrunekitSELL(CompiledKernel):
    """SELL-16 with a row permutation, uint16 columns, fp32 values."""

    version = 1

    def available(self) -> bool:
        return _function() is not None

    def accepts(self, shape: tuple[int, int]) -> bool:
        return shape[1] <= 2**16

    def pack(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        out, inp = weight.shape
        if not self.accepts((out, inp)):
            raise ConfigError(f"prunekit_sell takes at most 65,536 inputs, got {inp}")
        counts = (weight != 0).sum(1)  # [out]
        perm = torch.argsort(counts, descending=True, stable=True)  # permuted row k = row perm[k]
        rowptr, col, values = csr_parts(weight[perm])
        slices = -(-out // LANES)
        padded = torch.zeros(slices * LANES, dtype=torch.int64)
        padded[:out] = counts[perm]
        widths = padded.view(slices, LANES).amax(1)  # [slices]
        sptr = torch.zeros(slices + 1, dtype=torch.int64)
        sptr[1:] = torch.cumsum(widths, 0)
        # the k-th non-zero of permuted row r goes to entry (sptr[r // 16] + k) * 16 + r % 16
        rows = torch.repeat_interleave(torch.arange(out), padded[:out])
        k = torch.arange(values.numel()) - rowptr[rows]
        pos = (sptr[rows // LANES] + k) * LANES + rows % LANES
        total = int(sptr[-1]) * LANES
        val = torch.zeros(total, dtype=torch.float32)
        cols = torch.zeros(total, dtype=torch.int64)
        val[pos] = values.to(torch.float32)
        cols[pos] = col
        if total >= 2**31:
            raise ConfigError(f"{out}x{inp} weight is too large for prunekit_sell")
        return {
            "sptr": sptr.to(torch.int32),
            "perm": perm.to(torch.int32),
            "col": cols.to(torch.uint16),
            "values": val,
        }

    def bind(self, packed: Mapping[str, torch.Tensor], shape):
        arrays = [packed["sptr"], packed["perm"], packed["col"], packed["values"]]
        return _function(), arrays, (), True

    def unpack(self, packed, shape):
        sptr, perm = packed["sptr"].long(), packed["perm"].long()
        val, col = packed["values"], packed["col"].long()
        e = torch.nonzero(val).squeeze(1)  # stored non-zeros (padding holds zeros)
        slice_of = torch.searchsorted(sptr, e // LANES, right=True) - 1
        rows = perm[slice_of * LANES + e % LANES]
        dense = torch.zeros(shape, dtype=val.dtype)
        dense[rows, col[e]] = val[e]
        return dense
