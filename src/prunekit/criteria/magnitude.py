"""Magnitude criteria: L1 (``"magnitude"``) and L2 (``"l2"``) norms of a unit's weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext

#: rows per block of :func:`slice_sums`: about 4 MiB of float32, so the temporary stays in cache
_BLOCK_BYTES = 1 << 22


@torch.no_grad()
def slice_sums(
    w: torch.Tensor, dim: int, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``fn(w)`` (elementwise, float32) summed over every dimension but ``dim`` ``[w.shape[dim]]``,
    a block of rows at a time: no temporary as large as ``w`` (a 30k-token embedding's would cost
    more in fresh pages than the sums themselves)."""
    w = w.detach()
    if w.dim() < 2:
        return fn(w)
    rows = max(1, _BLOCK_BYTES // max(1, w[0].numel() * 4))
    rest = [d for d in range(w.dim()) if d != dim]
    if dim == 0:
        return torch.cat([fn(b).sum(rest) for b in w.split(rows)])
    out = torch.zeros(w.shape[dim], device=w.device)
    for b in w.split(rows):
        out += fn(b).sum(rest)
    return out


@CRITERIA.register("magnitude", examples=("magnitude",))
@dataclass(frozen=True)
class Magnitude(Criterion):
    """|w|; a unit scores the L1 norm of its weights."""

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return target.matrix().abs().float()

    def slice_scores(self, target: Target, ctx: ScoreContext, dim: int) -> torch.Tensor:
        return slice_sums(target.weight, dim, lambda b: b.abs().float())


@CRITERIA.register("l2", examples=("l2",))
@dataclass(frozen=True)
class L2(Criterion):
    """w²; a unit scores its squared L2 norm, which ranks units as the L2 norm does."""

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return target.matrix().float().square()

    def slice_scores(self, target: Target, ctx: ScoreContext, dim: int) -> torch.Tensor:
        return slice_sums(target.weight, dim, lambda b: b.float().square())
