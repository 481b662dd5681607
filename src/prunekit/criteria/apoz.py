"""APoZ (Hu et al. 2016): the average percentage of zeros of a neuron's post-activation output.

A neuron or output channel that is mostly zero after its activation carries little; the highest
APoZ goes first. The statistic belongs to output channels: :func:`apoz_channel_scores` gives the
per-channel score (``[out]``, higher = keep) for channel / neuron granularities; as a
:class:`Criterion` the score is broadcast over the channel's row of the ``[out, in]`` view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext


def post_activation(target: Target, ctx: ScoreContext):
    """The target's :class:`~prunekit.calibrate.OutputStats` (after its activation)."""
    st = ctx.stats.get(target.qualname)
    if st is None or st.raw_outputs is None:
        raise ConfigError(f"no output statistics for {target.qualname}: calibration did not run")
    return st.post_activation(target.qualname)


def apoz_channel_scores(target: Target, ctx: ScoreContext) -> torch.Tensor:
    """``1 − APoZ`` per output channel, ``[out]``: higher means keep."""
    return 1.0 - post_activation(target, ctx).apoz()


def broadcast_rows(channel: torch.Tensor, target: Target) -> torch.Tensor:
    """A per-output-channel score ``[out]`` repeated over each row: ``[out, in]``."""
    out, cols = target.matrix().shape
    if channel.numel() != out:
        raise ConfigError(
            f"{target.qualname}: {channel.numel()} channel statistics for {out} output rows"
        )
    return channel.to(target.weight.device).float().unsqueeze(1).expand(out, cols).contiguous()


@CRITERIA.register("apoz", examples=("apoz",))
@dataclass(frozen=True)
class APoZ(Criterion):
    """Prunes the neurons / output channels whose activations are most often zero.

    The activation is the module that consumes the layer's output (through BN or dropout); with
    none (a functional activation), ReLU(output) is used, with a warning.
    """

    requires_data: ClassVar[bool] = True
    stats: ClassVar[frozenset[str]] = frozenset({"outputs"})
    layerwise: ClassVar[bool] = True

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return broadcast_rows(apoz_channel_scores(target, ctx), target)
