"""Random scores: the baseline every criterion must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext


@CRITERIA.register("random", examples=("random",))
@dataclass(frozen=True)
class Random(Criterion):
    """Uniform random scores from a generator seeded by the run's seed and the layer's name."""

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        shape = target.matrix().shape
        return torch.rand(shape, generator=ctx.generator(target), device=target.weight.device)
