"""First-order Taylor importance (Molchanov et al. 2019): |w · ∂L/∂w|.

Gradients are accumulated over the ``data`` batches with ``loss_fn(output, batch)``, or with the
model's own loss (``output.loss`` of a Hugging Face model given labels, or a scalar output). A
group's unit sums the element scores of all its members.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..calibrate import gradient_sums
from ..errors import ConfigError
from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext


@CRITERIA.register("taylor", examples=("taylor",))
@dataclass(frozen=True)
class Taylor(Criterion):
    requires_data = True

    def collect(self, targets: list[Target], ctx: ScoreContext) -> None:
        sums = gradient_sums(ctx.model, targets, ctx.data, ctx.loss_fn, ctx.progress, square=False)
        for t in targets:
            ctx.stats[t.qualname] = {"taylor": (sums[t.qualname] * t.weight.detach().float()).abs()}

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        stats = ctx.stats.get(target.qualname, {})
        if "taylor" not in stats:
            raise ConfigError(f"criterion 'taylor' has no gradients for {target.qualname}")
        return target.to_matrix(stats["taylor"])
