"""Magnitude criteria: L1 (``"magnitude"``) and L2 (``"l2"``) norms of a unit's weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..memo import TensorMemo
from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext

#: rows per block of :func:`slice_sums`: about 4 MiB of float32, so the temporary stays in cache
_BLOCK_BYTES = 1 << 22


#: weight -> (fn name, dim) -> its sums along dimension 0 or 1, left over from the pass of
#: :func:`slice_sums` that computed both
_SUMS = TensorMemo()


@torch.no_grad()
def slice_sums(
    w: torch.Tensor, dim: int, fn: Callable[[torch.Tensor], torch.Tensor], name: str
) -> torch.Tensor:
    """``fn(w)`` (elementwise, float32, called ``name``) summed over every dimension but ``dim``
    ``[w.shape[dim]]``, a block of rows at a time: no temporary as large as ``w`` (a 30k-token
    embedding's would cost more in fresh pages than the sums themselves). One pass gives the
    sums along dimensions 0 and 1 of a conv weight; the other one is kept for the next call (a
    channel group scores a layer's rows, another its columns) until ``w`` is written."""
    dim = dim % max(1, w.dim())
    found = _SUMS.get(w).pop((name, dim), None)
    if found is not None:
        return found
    data = w.detach()
    if data.dim() < 2:
        return fn(data)
    rows = max(1, _BLOCK_BYTES // max(1, data[0].numel() * 4))
    rest = [d for d in range(data.dim()) if d != dim]
    if dim == 0 and data.dim() == 2:
        return torch.cat([fn(b).sum(rest) for b in data.split(rows)])
    if dim > 1 or data.dim() == 2:
        out = torch.zeros(data.shape[dim], device=data.device)
        for b in data.split(rows):
            out += fn(b).sum(rest)
        return out
    firsts, seconds = [], torch.zeros(data.shape[1], device=data.device)
    for b in data.split(rows):
        s = fn(b)
        s = s.flatten(2).sum(2) if s[0, 0].numel() > 1 else s.view(s.shape[:2])
        firsts.append(s.sum(1))
        seconds += s.sum(0)
    sums = (torch.cat(firsts), seconds)
    _SUMS.values(w)[(name, 1 - dim)] = sums[1 - dim]
    return sums[dim]


@CRITERIA.register("magnitude", examples=("magnitude",))
@dataclass(frozen=True)
class Magnitude(Criterion):
    """|w|; a unit scores the L1 norm of its weights."""

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return target.matrix().abs().float()

    def slice_scores(self, target: Target, ctx: ScoreContext, dim: int) -> torch.Tensor:
        return slice_sums(target.weight, dim, lambda b: b.abs().float(), "abs")


@CRITERIA.register("l2", examples=("l2",))
@dataclass(frozen=True)
class L2(Criterion):
    """w²; a unit scores its squared L2 norm, which ranks units as the L2 norm does."""

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return target.matrix().float().square()

    def slice_scores(self, target: Target, ctx: ScoreContext, dim: int) -> torch.Tensor:
        return slice_sums(target.weight, dim, lambda b: b.float().square(), "square")
