"""``prunekit_nm`` (fp32 values) and ``prunekit_nm_bf16``: N:M packed weights (2:4, 1:4, 4:8, 2:8).

Every group of M consecutive inputs keeps exactly N slots (groups with fewer non-zeros pad with
zero values): the values, row-major, plus each slot's position in its group, 2 bits for M = 4 and
4 bits for M = 8. At 2:4 that is 2.125 bytes per weight against 4 dense. The compiled kernel
(``nm.cpp``) picks each slot's input out of registers with AVX-512 permutes; elsewhere it runs
portable C++. A weight fits only if no group holds more than N non-zeros, so this kernel is a
candidate only for N:M-pruned layers.

The checkpoint format ``nm`` stores the same slots in the same order (each group's kept positions
ascending, groups padded with their earliest zeros) and ranks each group's positions as one
pattern number; :func:`packed_from_nm_format` turns its parts into this kernel's layout directly,
without a dense weight in between.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError
from ...formats._bits import unpack_uint
from ...formats.base import check_keys, fail, meta_int, part
from ...formats.nm import GROUP_SIZES, patterns, rank_bits
from ._build import CompiledKernel, library_function
from .base import KERNELS
from .bitmask import isa_of
from .hugepages import in_huge_pages

SOURCE = Path(__file__).with_name("nm.cpp")
#: (out, n, in, N, M, idx, values, x, bias, y, threads) -> 0, or 1 for an unsupported N:M
ARGTYPES = (*[ctypes.c_int64] * 5, *[ctypes.c_void_p] * 5, ctypes.c_int)
#: the patterns the kernel runs, fewest bytes per weight first (the first that fits is used)
PATTERNS = ((1, 4), (2, 8), (2, 4), (4, 8))
CHUNK = 16  # values per index chunk


def nm_pattern(weight: torch.Tensor) -> tuple[int, int] | None:
    """The first of :data:`PATTERNS` whose groups (along inputs) all hold <= N non-zeros."""
    nz = weight != 0
    for n, m in PATTERNS:
        if weight.numel() and weight.shape[1] % m == 0 and int(_most(nz, m)) <= n:
            return n, m
    return None


def _most(nz: torch.Tensor, m: int) -> int:
    """The most non-zeros in any group of ``m`` consecutive entries of ``nz [out, in]``."""
    return int(nz.reshape(-1, m).sum(1).max())


def _position_bits(m: int) -> int:
    return 2 if m == 4 else 4


def nm_parts(weight: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [out, K], idx [out, chunks * bits / 2] int32)`` with K = in/M*N padded to 16."""
    out, inp = weight.shape
    w = weight.detach().reshape(out, inp // m, m)  # [out, G, M]
    nz = w != 0
    if _most(nz.reshape(out, inp), m) > n:
        raise ConfigError(
            f"a group of {m} holds more than {n} non-zeros: the weight is not {n}:{m}"
        )
    # pad each group's slots with its earliest zeros, so exactly N are kept
    room = n - nz.sum(-1, keepdim=True)  # [out, G, 1]
    keep = nz | ((~nz).cumsum(-1) <= room)
    k = inp // m * n
    values = w[keep].reshape(out, k)
    pos = torch.arange(m).expand_as(w)[keep].reshape(out, k)
    return _slot_layout(values, pos, m)


def _slot_layout(
    values: torch.Tensor, pos: torch.Tensor, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots ``values, pos [out, K]`` padded to chunks of 16, positions packed into int32 words."""
    out, k = values.shape
    chunks = -(-k // CHUNK)
    vals = torch.zeros(out, chunks * CHUNK, dtype=values.dtype)
    slots = torch.zeros(out, chunks * CHUNK, dtype=torch.int64)
    vals[:, :k] = values
    slots[:, :k] = pos
    bits = _position_bits(m)
    per_word = 32 // bits
    lanes = slots.reshape(out, -1, per_word)  # [out, words, lanes per uint32]
    shifts = torch.arange(per_word) * bits
    words = (lanes << shifts).sum(-1)  # < 2**32
    idx = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return vals, idx


def packed_from_nm_format(
    parts: Mapping[str, torch.Tensor],
    meta: Mapping[str, int],
    shape: tuple[int, int],
    value_dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """This kernel's packed tensors straight from a checkpoint's ``nm`` parts of an fp32
    ``[out, in]`` weight (``parts``: ``index`` and ``values``; ``meta``: ``n`` and ``m``), with no
    dense weight in between; equal to ``pack`` of the decoded weight. The parts are checked as the
    format's decoder checks them (a corrupt part raises ``CheckpointError``); an N:M pattern the
    kernel does not run raises ``ConfigError``."""
    check_keys(dict(meta), ("n", "m"))
    m = meta_int(dict(meta), "m", 2, max(GROUP_SIZES))
    n = meta_int(dict(meta), "n", 1, m - 1)
    if (n, m) not in PATTERNS:
        raise ConfigError(
            f"the N:M kernel runs {', '.join(f'{a}:{b}' for a, b in PATTERNS)}, not {n}:{m}"
        )
    out, inp = shape
    if inp % m:
        raise ConfigError(f"{shape} has inputs that are not a multiple of M={m}")
    groups = out * inp // m
    stored = part(dict(parts), "values", torch.float32, groups * n)
    index = part(dict(parts), "index", torch.uint8)
    ranks = unpack_uint(index, groups, rank_bits(n, m), "nm index")
    table = patterns(n, m)
    if ranks.size and ranks.max() >= table.size:
        raise fail(f"nm pattern ranks exceed the {table.size} patterns of {n}:{m}")
    bits = (table[:, None] >> np.arange(m)) & 1  # [C(M, N), M]
    slot_pos = np.nonzero(bits)[1].reshape(table.size, n)  # each pattern's positions, ascending
    pos = torch.from_numpy(slot_pos[ranks]).reshape(out, inp // m * n)  # [out, K]
    values = stored.reshape(out, inp // m * n).to(value_dtype)
    vals, idx = _slot_layout(values, pos, m)
    return in_huge_pages(
        {"values": vals, "idx": idx, "pattern": torch.tensor((n, m), dtype=torch.int64)}
    )


def nm_dense(packed: Mapping[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    out, inp = shape
    n, m = (int(v) for v in packed["pattern"])
    bits = _position_bits(m)
    per_word = 32 // bits
    words = packed["idx"].to(torch.int64) & 0xFFFFFFFF  # [out, words]
    pos = (words.unsqueeze(-1) >> (torch.arange(per_word) * bits)) & (m - 1)
    k = inp // m * n
    pos = pos.reshape(out, -1)[:, :k]  # [out, K]
    vals = packed["values"][:, :k].to(torch.float32)
    cols = (torch.arange(k) // n * m).expand(out, k) + pos
    dense = torch.zeros(shape, dtype=torch.float32)
    dense.scatter_(1, cols, vals)
    return dense


class _NM(CompiledKernel):
    symbol = ""
    version = 3  # arrays in huge pages: decisions cached for versions 1-2 are stale

    def available(self) -> bool:
        return library_function(SOURCE, self.symbol, ARGTYPES, ctypes.c_int) is not None

    def variant(self) -> str:
        return isa_of(SOURCE, "pk_nm_isa")

    def fits(self, weight: torch.Tensor) -> bool:
        return nm_pattern(weight) is not None

    def pack(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        pattern = nm_pattern(weight)
        if pattern is None:
            raise ConfigError(
                f"{self.name} needs an N:M weight ({', '.join(f'{n}:{m}' for n, m in PATTERNS)})"
            )
        values, idx = nm_parts(weight, *pattern)
        return in_huge_pages(
            {
                "values": values.to(self.value_dtype).contiguous(),
                "idx": idx,
                "pattern": torch.tensor(pattern, dtype=torch.int64),
            }
        )

    def bind(self, packed: Mapping[str, torch.Tensor], shape):
        fn = library_function(SOURCE, self.symbol, ARGTYPES, ctypes.c_int)
        n, m = packed["pattern"].tolist()
        return fn, [packed["idx"], packed["values"]], (shape[1], n, m), False

    def unpack(self, packed, shape):
        return nm_dense(packed, shape)


@KERNELS.register("prunekit_nm", examples=("2:4", "1:4", "4:8"))
class PrunekitNM(_NM):
    """N:M packed fp32 values with per-slot group positions (exact)."""

    symbol = "pk_nm_f32"


@KERNELS.register("prunekit_nm_bf16", examples=("2:4",))
class PrunekitNMBF16(_NM):
    """N:M packed bfloat16 values, converted to fp32 in registers (inexact: opt-in)."""

    exact = False
    value_dtype = torch.bfloat16
    symbol = "pk_nm_bf16"
