"""Activation importance (Minitron, Muralidharan et al. 2024) for structured units.

A unit (a hidden channel, an attention head, an MLP neuron) is as important as the activation it
carries: the L2 norm, over the calibration tokens, of the inputs that the layers consuming it
read at its positions (LayerNorm outputs for the hidden width, the attention output per head for
heads, the post-activation value for neurons). Summed over the unit's consumer slices. A unit
with no consumer slice (a whole layer) sums the activation each of its weights reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..targets import Target, is_hf_conv1d
from .base import CRITERIA, Criterion, ScoreContext
from .wanda import input_norms


@CRITERIA.register("activation", examples=("activation",))
@dataclass(frozen=True)
class Activation(Criterion):
    """The L2 norm over calibration tokens of the activation a unit carries (Minitron)."""

    requires_data: ClassVar[bool] = True
    stats: ClassVar[frozenset[str]] = frozenset({"norms"})

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        """Each weight scores the activation it reads (its input feature's norm)."""
        return input_norms(target, ctx).float()

    def group_scores(self, group: Any, ctx: ScoreContext) -> torch.Tensor | None:
        total = torch.zeros(group.units)
        found = False
        for slot, idx in group.members():
            target = slot.target()
            if target is None or target.weight.dim() != 2:
                continue
            if slot.dim != (0 if is_hf_conv1d(target.module) else 1):
                continue  # not the consumer side of this weight
            norms = input_norms(target, ctx)[0].float().cpu()  # [in]
            total += (norms[idx.clamp_min(0)] * (idx >= 0)).sum(1)
            found = True
        return total if found else None
