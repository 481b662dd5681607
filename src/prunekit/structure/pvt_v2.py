"""Heads of PVTv2's spatial-reduction attention.

``PvtV2SelfAttention`` reshapes the heads' output to the width of its input hidden states (a
local value), so it cannot run with fewer heads. Its heads are plain blocks of ``query``/``key``/
``value`` rows and ``proj`` columns; keys and values come from the spatially reduced input, whose
width (the input's) stays. After pruning the module's class becomes a subclass whose forward
merges the heads into ``all_head_size`` channels instead (same parameters and keys); a checkpoint
gets it back from its shapes (:meth:`PvtV2Attention.reattach`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .heads import HeadAdapter, hf_example, pruned_class, register


def _forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    height: int,
    width: int,
    output_attentions: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, ...]:
    """``PvtV2SelfAttention.forward`` with ``all_head_size`` (< the input width) channels."""
    b, n, c = hidden_states.shape
    query = self.transpose_for_scores(self.query(hidden_states))  # [B, h, T, d]
    if self.linear_attention or self.spatial_reduction_ratio > 1:
        grid = hidden_states.permute(0, 2, 1).reshape(b, c, height, width)  # [B, C, H, W]
        if self.linear_attention:
            grid = self.pool(grid)
        reduced = self.spatial_reduction(grid).reshape(b, c, -1).permute(0, 2, 1)  # [B, S, C]
        reduced = self.layer_norm(reduced)
        hidden_states = self.act(reduced) if self.linear_attention else reduced
    key = self.transpose_for_scores(self.key(hidden_states))  # [B, h, S, d]
    value = self.transpose_for_scores(self.value(hidden_states))
    scores = query @ key.transpose(-1, -2) / math.sqrt(self.attention_head_size)
    probs = self.attn_drop(nn.functional.softmax(scores, dim=-1))
    context = (probs @ value).transpose(1, 2).reshape(b, n, self.all_head_size)  # [B, T, h * d]
    context = self.proj_drop(self.proj(context))
    return (context, probs) if output_attentions else (context,)


@register(
    "pvt-v2",
    "PvtV2SelfAttention",
    examples=(
        hf_example(
            "PvtV2Model", "image", num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32],
            num_attention_heads=[2, 4], mlp_ratios=[2, 2], image_size=32, sr_ratios=[2, 1],
            patch_sizes=[7, 3], strides=[4, 2],
        ),
    ),
)  # fmt: skip
class PvtV2Attention(HeadAdapter):
    """PVTv2: ``query``/``key``/``value`` rows and ``proj`` columns per head."""

    q, k, v, o = "query", "key", "value", "proj"

    def reattach(self, module: nn.Module) -> None:
        if module.all_head_size != module.hidden_size and type(module).forward is not _forward:
            module.__class__ = pruned_class(type(module), _forward)
