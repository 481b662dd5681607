"""Mean activation: a neuron's mean post-activation output; the lowest goes first.

:func:`mean_activation_channel_scores` is the per-output-channel score (``[out]``) for channel
and neuron granularities; as a :class:`Criterion` it is broadcast over each row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..targets import Target
from .apoz import broadcast_rows, post_activation
from .base import CRITERIA, Criterion, ScoreContext


def mean_activation_channel_scores(target: Target, ctx: ScoreContext) -> torch.Tensor:
    """Mean post-activation output per output channel, ``[out]``: higher means keep."""
    return post_activation(target, ctx).mean()


@CRITERIA.register("mean-activation", examples=("mean-activation",))
@dataclass(frozen=True)
class MeanActivation(Criterion):
    """Prunes the neurons / output channels with the lowest mean post-activation output."""

    requires_data: ClassVar[bool] = True
    stats: ClassVar[frozenset[str]] = frozenset({"outputs"})
    layerwise: ClassVar[bool] = True

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return broadcast_rows(mean_activation_channel_scores(target, ctx), target)
