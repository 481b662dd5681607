"""FPGM (He et al. 2019): filters near the geometric median of their layer are redundant."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext


@CRITERIA.register("fpgm", examples=("fpgm",))
@dataclass(frozen=True)
class FPGM(Criterion):
    """A filter scores the sum of its L2 distances to the layer's other filters; the filter
    closest to the geometric median scores lowest. Per output channel; as element scores every
    weight of a row carries its row's score."""

    def channel_scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        rows = target.matrix().float()  # [out, in]
        return torch.cdist(rows[None], rows[None])[0].sum(1)  # [out]

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        rows = target.matrix()
        per = self.channel_scores(target, ctx) / rows.shape[1]
        return per[:, None].expand(rows.shape).clone()
