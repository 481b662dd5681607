"""``csr``: compressed sparse rows with narrow column indices.

The tensor is seen as ``[rows, cols] = [shape[0], numel / shape[0]]`` (``[1, numel]`` below 2-D).
Parts: ``counts`` (non-zeros per row: int16 when ``cols < 2**15``, else int32), the column
indices, and the values in row-major order. Column indices are stored whichever way is smaller:

* ``int16``: one 16-bit index per non-zero (``cols <= 2**15``);
* ``delta8``: per row, the gap ``g`` to the previous non-zero (zeros between them) as
  ``g // 255`` escape bytes of 255 then one byte ``g % 255``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._bits import nonzeros, scatter
from .base import FORMATS, Encoded, Format, Meta, Parts, Shape, check_keys, fail, part

_ESC = 255


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    rows = shape[0] if len(shape) >= 2 else 1
    return rows, (math.prod(shape) // rows if rows else 0)


def count_dtype(cols: int) -> torch.dtype:
    return torch.int16 if cols < 2**15 else torch.int32


def encode_delta8(gaps: np.ndarray) -> np.ndarray:
    """Gaps ``[nnz]`` as bytes: ``g // 255`` escapes (255) then ``g % 255``."""
    if not gaps.size or gaps.max() < _ESC:
        return gaps.astype(np.uint8)
    ends = np.cumsum(gaps // _ESC + 1) - 1  # position of each gap's final byte
    out = np.full(int(ends[-1]) + 1, _ESC, dtype=np.uint8)
    out[ends] = gaps % _ESC
    return out


def decode_delta8(b: np.ndarray, nnz: int) -> np.ndarray:
    """The inverse of :func:`encode_delta8`; the stream must code exactly ``nnz`` gaps."""
    ends = np.flatnonzero(b != _ESC)
    if ends.size != nnz or (nnz and ends[-1] != b.size - 1) or (not nnz and b.size):
        raise fail(
            f"delta8 stream codes {ends.size} gaps (or has trailing escapes), expected {nnz}"
        )
    escapes = np.diff(ends, prepend=-1) - 1
    return escapes * _ESC + b[ends]


@FORMATS.register("csr", examples=("unstructured:0.9", "2:4"))  # tensor patterns it stores
class CSR(Format):
    part_names = ("counts", "indices", "values")

    def encode(self, t: torch.Tensor) -> Encoded | None:
        rows, cols = matrix_shape(tuple(t.shape))
        if t.numel() == 0 or cols >= 2**31:
            return None
        pos, values = nonzeros(t)
        per_row = np.bincount(pos // cols, minlength=rows) if rows > 1 else np.array([pos.size])
        counts = torch.from_numpy(per_row).to(count_dtype(cols))
        row = np.repeat(np.arange(rows, dtype=np.int64), per_row)
        col = pos - row * cols
        gaps = np.diff(pos, prepend=-1) - 1  # zeros since the previous non-zero ...
        first = (np.cumsum(per_row) - per_row)[per_row > 0]
        gaps[first] = col[first]  # ... or since the start of its row
        delta8 = encode_delta8(gaps)
        if cols <= 2**15 and 2 * pos.size <= delta8.size:
            indices, kind = torch.from_numpy(col.astype(np.int16)), "int16"
        else:
            indices, kind = torch.from_numpy(delta8), "delta8"
        return Encoded({"counts": counts, "indices": indices, "values": values}, {"index": kind})

    def decode(self, parts: Parts, meta: Meta, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        check_keys(meta, ("index",))
        rows, cols = matrix_shape(shape)
        values = part(parts, "values", dtype)
        nnz = values.numel()
        counts = part(parts, "counts", count_dtype(cols), rows).numpy().astype(np.int64)
        if (counts < 0).any() or (counts > cols).any() or int(counts.sum()) != nnz:
            raise fail(f"csr row counts are out of range or do not sum to {nnz}")
        row = np.repeat(np.arange(rows, dtype=np.int64), counts)
        first = np.cumsum(counts) - counts  # index of each row's first non-zero
        kind = meta.get("index")
        if kind == "int16" and cols <= 2**15:
            col = part(parts, "indices", torch.int16, nnz).numpy().astype(np.int64)
            step = np.diff(col, prepend=-1)
            step[first[counts > 0]] = col[first[counts > 0]] + 1  # rows restart
            if (step <= 0).any() or (col >= cols).any():
                raise fail("csr column indices are out of range or not increasing within a row")
        elif kind == "delta8":
            gaps = decode_delta8(part(parts, "indices", torch.uint8).numpy(), nnz)
            run = np.cumsum(gaps + 1)  # [nnz] running position, reset per row below
            base = np.where(first > 0, run[np.maximum(first - 1, 0)] if nnz else 0, 0)  # [rows]
            col = run - base[row] - 1
            if nnz and (col >= cols).any():
                raise fail("csr column gaps run past the end of a row")
        else:
            raise fail(f"unknown csr index kind {kind!r}")
        return scatter(math.prod(shape), row * cols + col, values, dtype, shape)
