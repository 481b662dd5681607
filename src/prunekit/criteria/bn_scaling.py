"""Network slimming (Liu et al. 2017): a channel is as important as its BatchNorm scale |γ|."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext
from .magnitude import Magnitude


@CRITERIA.register("bn-scaling", examples=("bn-scaling",))
@dataclass(frozen=True)
class BNScaling(Criterion):
    """Structured: a unit scores the sum of |γ| of the BatchNorm/GroupNorm weights in its group;
    groups with no such norm fall back to L1 magnitude. Unstructured: L1 magnitude."""

    def group_scores(self, group: Any, ctx: ScoreContext) -> torch.Tensor | None:
        total = torch.zeros(group.units)
        found = False
        for slot, idx in group.members():
            norm = isinstance(slot.module, (nn.modules.batchnorm._NormBase, nn.GroupNorm))
            if norm and slot.attr == "weight":
                found = True
                total += slot.tensor.detach().abs().float().cpu()[idx].sum(1)
        return total if found else None

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return Magnitude().scores(target, ctx)
