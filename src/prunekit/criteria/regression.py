"""Regression-based channel pruning (He et al. 2017) as a solver; see
:mod:`prunekit.reconstruct.regression`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError, WeightError
from ..granularity import Granularity
from ..granularity.unstructured import Unstructured
from ..masks import get_mask
from ..reconstruct.regression import refit, select_channels
from ..targets import Target
from .base import CRITERIA, ScoreContext, Solver
from .wanda import input_norms


def input_channels(target: Target) -> int:
    """The number of input channels C of the ``[out, K*C]`` matrix view (C = in for Linear)."""
    m = target.module
    if isinstance(m, nn.modules.conv._ConvNd):
        if m.groups != 1:
            raise WeightError(f"{target.qualname}: 'regression' does not support grouped convs")
        return m.in_channels
    return target.matrix().shape[1]


@CRITERIA.register("regression", examples=("regression",))
@dataclass(frozen=True)
class Regression(Solver):
    """Removes whole input channels of each layer, chosen by LASSO, and refits the rest.

    ``sparsity`` is the fraction of input channels removed (so element sparsity is rounded to
    whole channels). Removing input channel c of a layer is what removing output channel c of
    its producer requires (the structured shrink). Its :meth:`scores` (for cross-layer
    allocations) are the channels' ‖X_c‖·‖W_c‖, broadcast over the channel's columns.
    """

    stats: ClassVar[frozenset[str]] = frozenset({"hessian"})

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        channels = input_channels(target)
        w = target.matrix().float()
        energy = (w.abs() * input_norms(target, ctx)).square().sum(0)  # [K*C]
        per_channel = energy.view(-1, channels).sum(0).sqrt()  # [C]
        return per_channel.repeat(w.shape[1] // channels).expand_as(w).contiguous()

    def supports(self, granularity: Granularity) -> str | None:
        if isinstance(granularity, Unstructured):
            return None
        return (
            "criterion 'regression' selects whole input channels by LASSO and refits the rest "
            f"by least squares; use granularity='unstructured', not {granularity.spec}"
        )

    def solve(
        self,
        targets: list[Target],
        ctx: ScoreContext,
        sparsities: dict[str, float],
        granularity: Granularity,
    ) -> dict[str, torch.Tensor]:
        reason = self.supports(granularity)
        if reason is not None:
            raise ConfigError(reason)
        keep = {}
        for t in targets:
            channels = input_channels(t)
            w = t.matrix().float()
            xtx = ctx.stats[t.qualname].inputs.xtx[0]  # [cols, cols]
            old = get_mask(t.module, t.param)
            forbidden = None
            if old is not None:  # a channel whose weights are all pruned stays pruned
                forbidden = ~t.to_matrix(old).view(w.shape[0], -1, channels).any(dim=(0, 1))
            n_keep = channels - round(sparsities[t.qualname] * channels)
            if forbidden is not None:
                n_keep = min(n_keep, int((~forbidden).sum()))
            chosen = select_channels(w, xtx, channels, n_keep, forbidden)  # [C]
            cols = chosen.repeat(w.shape[1] // channels)  # [K*C]
            new = refit(w, xtx, cols)
            t.weight.data.copy_(t.from_matrix(new).to(t.weight.dtype))
            keep[t.qualname] = cols.unsqueeze(0).expand_as(w).clone()
        return keep
