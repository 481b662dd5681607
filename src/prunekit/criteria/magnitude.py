"""Magnitude criteria: L1 (``"magnitude"``) and L2 (``"l2"``) norms of a unit's weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext


@CRITERIA.register("magnitude", examples=("magnitude",))
@dataclass(frozen=True)
class Magnitude(Criterion):
    """|w|; a unit scores the L1 norm of its weights."""

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return target.matrix().abs().float()


@CRITERIA.register("l2", examples=("l2",))
@dataclass(frozen=True)
class L2(Criterion):
    """w²; a unit scores its squared L2 norm, which ranks units as the L2 norm does."""

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return target.matrix().float().square()
