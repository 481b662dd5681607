"""``prunekit_bitmask`` (fp32 values) and ``prunekit_bitmask_bf16``: a bitmask plus packed values.

Each row stores one bit per column (uint64 words) and its non-zero values in column order; a
row pointer says where each row's values start. Bytes per weight: 1/8 + density x 4 (fp32), so
at 50% sparsity about 1.9x less weight traffic than dense, with no 16-bit index per value as CSR
has. The compiled kernel (``bitmask.cpp``) expands values into place with AVX-512 (an AVX2 and a
portable path exist) and, at batch > 1, multiplies each expanded tile by up to 8 input rows.
Arrays of 2 MiB or more live in huge pages (:mod:`.hugepages`): batch 1 is bound by the stream
of values, and 4 KiB pages cost it a TLB miss and a prefetcher stop every 4 KiB.

``prunekit_bitmask_bf16`` stores the values as bfloat16 (rounded to nearest even) and converts
them to fp32 in registers: half the value bytes again, at the cost of bf16 rounding of the
weights (relative error up to 2^-9 per weight); it is inexact, so sparsify uses it only when asked.
``prunekit_bitmask_int8`` stores each row's values as int8 times one fp32 scale per row (the
row's largest magnitude / 127, rounded to nearest): a quarter of the fp32 value bytes, with an
error of up to half a step (scale / 2) per weight; also inexact and opt-in.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError
from ._build import CompiledKernel, library_function
from .base import KERNELS
from .hugepages import in_huge_pages

SOURCE = Path(__file__).with_name("bitmask.cpp")
#: (out, n, in, words, rowptr, mask, values, x, bias, y, threads)
ARGTYPES = (*[ctypes.c_int64] * 4, *[ctypes.c_void_p] * 6, ctypes.c_int)
#: the int8 kernel takes the row scales after the values
INT8_ARGTYPES = (*[ctypes.c_int64] * 4, *[ctypes.c_void_p] * 7, ctypes.c_int)
#: zero values after the last one: a full-width vector load past it stays inside the array
PAD = 64
ISA_NAMES = {3: "avx512vbmi2", 2: "avx512", 1: "avx2", 0: "portable"}


def isa_of(source: Path, symbol: str) -> str:
    """The code path the compiled ``source`` runs (its ``symbol()`` returns 2, 1 or 0)."""
    fn = library_function(source, symbol, (), ctypes.c_int)
    return "" if fn is None else ISA_NAMES[fn()]


def bitmask_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mask [out, words] int64, rowptr [out + 1] int32, values [nnz])`` of an ``[out, in]``."""
    out, inp = weight.shape
    words = -(-inp // 64)
    nz = (weight != 0).cpu().numpy()
    padded = np.zeros((out, words * 64), dtype=bool)
    padded[:, :inp] = nz
    # bit j of byte k is column 8k + j; 8 bytes little-endian make word w's bit j column 64w + j
    mask = np.packbits(padded, axis=1, bitorder="little").view("<i8")  # [out, words]
    counts = nz.sum(1)
    if counts.sum() >= 2**31:
        raise ConfigError(f"{out}x{inp} weight has too many non-zeros for int32 row pointers")
    rowptr = torch.zeros(out + 1, dtype=torch.int32)
    rowptr[1:] = torch.from_numpy(np.cumsum(counts)).to(torch.int32)
    values = weight.detach()[weight != 0]  # row-major: each row's values in column order
    return torch.from_numpy(mask.copy()), rowptr, values


def bitmask_dense(packed: Mapping[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """The dense fp32 ``[out, in]`` weight of bitmask parts."""
    inp = shape[1]
    bits = np.unpackbits(packed["mask"].numpy().view(np.uint8), axis=1, bitorder="little")
    keep = torch.from_numpy(bits[:, :inp].astype(bool))  # [out, in]
    nnz = int(packed["rowptr"][-1])
    dense = torch.zeros(shape, dtype=torch.float32)
    dense[keep] = packed["values"][:nnz].to(torch.float32)
    if "scale" in packed:
        dense *= packed["scale"].unsqueeze(1)
    return dense


def row_scales(weight: torch.Tensor) -> torch.Tensor:
    """``[out]`` fp32: each row's largest magnitude / 127 (1 for an all-zero row)."""
    top = weight.detach().abs().amax(1).to(torch.float32)
    return torch.where(top > 0, top / 127, torch.ones_like(top))


class _Bitmask(CompiledKernel):
    symbol = ""
    version = 3  # arrays in huge pages: decisions cached for versions 1-2 are stale
    argtypes = ARGTYPES

    def available(self) -> bool:
        return self._function() is not None

    def variant(self) -> str:
        return isa_of(SOURCE, "pk_bitmask_isa")

    def _function(self):
        return library_function(SOURCE, self.symbol, self.argtypes)

    def pack(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        mask, rowptr, values = bitmask_parts(weight)
        vals = torch.zeros(values.numel() + PAD, dtype=self.value_dtype)
        vals[: values.numel()] = values.to(self.value_dtype)
        return in_huge_pages({"mask": mask, "rowptr": rowptr, "values": vals})

    def bind(self, packed: Mapping[str, torch.Tensor], shape):
        mask = packed["mask"]
        arrays = [packed["rowptr"], mask, packed["values"]]
        return self._function(), arrays, (shape[1], mask.shape[1]), False

    def unpack(self, packed, shape):
        return bitmask_dense(packed, shape)


@KERNELS.register("prunekit_bitmask", examples=("unstructured:0.5", "unstructured:0.9"))
class PrunekitBitmask(_Bitmask):
    """Bitmask + packed fp32 values (exact)."""

    symbol = "pk_bitmask_f32"


@KERNELS.register("prunekit_bitmask_bf16", examples=("unstructured:0.5",))
class PrunekitBitmaskBF16(_Bitmask):
    """Bitmask + packed bfloat16 values, converted to fp32 in registers (inexact: opt-in)."""

    exact = False
    value_dtype = torch.bfloat16
    symbol = "pk_bitmask_bf16"


@KERNELS.register("prunekit_bitmask_int8", examples=("unstructured:0.5",))
class PrunekitBitmaskInt8(_Bitmask):
    """Bitmask + packed int8 values with one fp32 scale per row (inexact: opt-in)."""

    exact = False
    value_dtype = torch.int8
    symbol = "pk_bitmask_int8"
    argtypes = INT8_ARGTYPES

    def pack(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        scale = row_scales(weight)
        q = (weight.detach().to(torch.float32) / scale.unsqueeze(1)).round().clamp(-127, 127)
        mask, rowptr, _ = bitmask_parts(weight)  # the mask of the weight, not of q
        values = q[weight != 0]  # [nnz], row-major
        vals = torch.zeros(values.numel() + PAD, dtype=torch.int8)
        vals[: values.numel()] = values.to(torch.int8)
        return in_huge_pages({"mask": mask, "rowptr": rowptr, "values": vals, "scale": scale})

    def bind(self, packed: Mapping[str, torch.Tensor], shape):
        fn, arrays, dims, transpose = super().bind(packed, shape)
        return fn, [*arrays, packed["scale"]], dims, transpose
