"""``rice``: Golomb-Rice coded gaps between non-zeros, then the non-zero values in order.

For an i.i.d. mask of density p the gaps are geometric, and a Rice code with the best parameter
``k`` comes within a few percent of the mask's entropy ``H(p)`` per weight: this is the format that
approaches the information-theoretic limit at high sparsity.

Each gap ``g`` (zeros before a non-zero) is split into ``q = g >> k``, written in unary to the
``high`` stream as ``q`` zeros and a one, and its ``k`` low bits, written to the ``low`` stream.
Both streams are plain packed bits, so encoding and decoding are vectorised numpy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._bits import nonzeros, pack_bits, pack_uint, scatter, unpack_uint
from .base import FORMATS, Encoded, Format, Meta, Parts, Shape, check_keys, fail, meta_int, part

MAX_K = 40


def best_k(gaps: np.ndarray) -> int:
    """The Rice parameter with the fewest total bits: ``sum(g >> k) + nnz * (k + 1)``."""
    if gaps.size == 0:
        return 0
    kmax = int(gaps.max()).bit_length()
    costs = [int((gaps >> k).sum()) + gaps.size * (k + 1) for k in range(kmax + 1)]
    return int(np.argmin(costs))


@FORMATS.register("rice", examples=("unstructured:0.95", "unstructured:0.5"))
class Rice(Format):
    part_names = ("high", "low", "values")

    def encode(self, t: torch.Tensor) -> Encoded:
        pos, values = nonzeros(t)
        gaps = np.diff(pos, prepend=-1) - 1  # zeros before each non-zero
        k = best_k(gaps)
        q = gaps >> k
        high = np.zeros(int(q.sum()) + q.size, dtype=np.uint8)
        high[np.cumsum(q + 1) - 1] = 1
        low = pack_uint(gaps & ((1 << k) - 1), k)
        return Encoded({"high": pack_bits(high), "low": low, "values": values}, {"k": k})

    def decode(self, parts: Parts, meta: Meta, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        check_keys(meta, ("k",))
        k = meta_int(meta, "k", 0, MAX_K)
        numel = math.prod(shape)
        values = part(parts, "values", dtype)
        nnz = values.numel()
        high = part(parts, "high", torch.uint8)
        ones = np.flatnonzero(np.unpackbits(high.numpy()))
        if ones.size != nnz:
            raise fail(f"rice stream codes {ones.size} gaps but {nnz} values are stored")
        if high.numel() != ((int(ones[-1]) + 8) // 8 if nnz else 0):
            raise fail("rice stream has trailing bytes")
        q = np.diff(ones, prepend=-1) - 1
        if int(q.sum()) > numel >> k:  # also keeps the shifts below far from overflow
            raise fail("rice gaps run past the end of the tensor")
        gaps = (q << k) | unpack_uint(part(parts, "low", torch.uint8), nnz, k, "rice low bits")
        pos = np.cumsum(gaps + 1) - 1
        if nnz and pos[-1] >= numel:
            raise fail("rice gaps run past the end of the tensor")
        return scatter(numel, pos, values, dtype, shape)
