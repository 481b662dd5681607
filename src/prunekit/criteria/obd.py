"""Optimal Brain Damage (LeCun et al. 1990): saliency ½·w²·H_ii, with the Hessian's diagonal
estimated by the diagonal empirical Fisher: squared gradients accumulated over all batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..calibrate import gradient_sums
from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext


@CRITERIA.register("obd", examples=("obd",))
@dataclass(frozen=True)
class OBD(Criterion):
    """½·w²·F_ii, F = Σ over batches of (∂loss/∂w)² (the mean ranks the same).

    The loss is ``loss_fn(output, batch)`` when given (``pk.prune(..., loss_fn=...)``), else the
    model's own (e.g. a Hugging Face model called with ``labels``).
    """

    requires_data: ClassVar[bool] = True

    def collect(self, targets: list[Target], ctx: ScoreContext) -> None:
        sums = gradient_sums(ctx.model, targets, ctx.data, ctx.loss_fn, ctx.progress, square=True)
        ctx.stats.update({name: {"fisher_sum": s} for name, s in sums.items()})

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        fisher = target.to_matrix(ctx.stats[target.qualname]["fisher_sum"])
        return 0.5 * target.matrix().float().square() * fisher
