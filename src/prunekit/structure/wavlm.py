"""Heads of WavLM's gated relative-position attention.

``WavLMAttention`` runs torch's ``multi_head_attention_forward``, which derives the head size from
the input width (``embed_dim // num_heads``), and gates each head's position bias by a projection
of the INPUT's block of that head (``hidden_states.view(B, T, heads, -1)``): both need the original
head count. Its heads live in the q/k/v rows and out_proj columns, the per-head gate constants
``gru_rel_pos_const`` ``[1, H, 1, 1]`` and the first layer's bucket table ``rel_attn_embed``
``[buckets, H]``, whose bias every layer reuses, so all layers keep the same heads.

After pruning the module's class becomes a subclass whose forward computes the same thing for the
heads that remain: it remembers their original indices (``gate_heads``, recorded in the shape
manifest) to gate each by its own input block, and the head size from ``head_dim``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .heads import OutProjAttention, hf_example, keep_indices, pruned_class, register
from .propagate import Example

#: the original indices of the heads a layer kept (recorded in the shape manifest)
ATTR = "gate_heads"


def _forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    index: int = 0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``WavLMAttention.forward`` for the heads in ``self.gate_heads`` (``self.num_heads`` of
    them, ``self.head_dim`` wide); the input keeps its width."""
    b, n, _ = hidden_states.shape
    h, d = self.num_heads, self.head_dim
    if position_bias is None:  # [h, T, T] from the kept heads' columns -> [B * h, T, T]
        position_bias = self.compute_bias(n, n).unsqueeze(0).repeat(b, 1, 1, 1).view(b * h, n, n)
    block = self.gru_rel_pos_linear.in_features  # the original head size
    kept = torch.tensor(getattr(self, ATTR), device=hidden_states.device)
    gated = hidden_states.unflatten(-1, (-1, block))[:, :, kept].permute(0, 2, 1, 3)  # [B,h,T,c]
    proj = self.gru_rel_pos_linear(gated)
    proj = proj.view(*gated.shape[:-1], 2, 4).sum(-1)  # [B, h, T, 2]
    gate_a, gate_b = torch.sigmoid(proj).chunk(2, dim=-1)
    gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
    bias = (gate.view(b * h, -1, 1) * position_bias).view(b, h, n, n)
    if attention_mask is not None:  # WavLM's key padding mask: 1 attends
        pad = attention_mask.ne(1).view(b, 1, 1, n)
        bias = bias.masked_fill(pad, float("-inf"))
    q, k, v = (
        proj_(hidden_states).view(b, n, h, d).transpose(1, 2)  # [B, h, T, d]
        for proj_ in (self.q_proj, self.k_proj, self.v_proj)
    )
    scores = (q / math.sqrt(d)) @ k.transpose(-2, -1) + bias  # [B, h, T, T]
    weights = torch.softmax(scores, dim=-1)
    p = self.dropout if self.training else 0.0
    out = F.dropout(weights, p) @ v
    out = self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))  # [B, T, E]
    # WavLM returns the weights averaged over the heads, broadcast to every head
    return out, weights.mean(1, keepdim=True).expand(-1, h, -1, -1), position_bias


_AUDIO = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 64, "conv_dim": (16, 16), "conv_stride": (5, 2),
          "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16,
          "num_conv_pos_embedding_groups": 4, "num_buckets": 8,
          "max_bucket_distance": 16}  # fmt: skip


@register(
    "wavlm",
    "WavLMAttention",
    examples=(
        Example(
            hf_example("WavLMModel", **_AUDIO).build,
            lambda: torch.randn(2, 400, generator=torch.Generator().manual_seed(0)),
        ),
    ),
)
class WavLMAttention(OutProjAttention):
    """WavLM: q/k/v rows, out_proj columns, ``gru_rel_pos_const`` and ``rel_attn_embed``
    columns per head; every layer of an encoder keeps the first layer's heads."""

    per_head = (("", "gru_rel_pos_const", 1), ("rel_attn_embed", "weight", 1))

    def couple(self, prefix: str, module: nn.Module) -> str | None:
        return prefix.rsplit(".layers.", 1)[0]  # the encoder: its first layer's bias is shared

    def drop(self, module: nn.Module, heads: list[int]) -> None:
        keep_indices(module, ATTR, module.num_heads, heads)

    def resize(self, module: nn.Module) -> None:
        module.num_heads = module.out_proj.weight.shape[1] // module.head_dim
        if isinstance(getattr(module, "rel_attn_embed", None), nn.Embedding):
            module.rel_attn_embed.embedding_dim = module.num_heads

    def reattach(self, module: nn.Module) -> None:
        if getattr(module, ATTR, None) is not None and type(module).forward is not _forward:
            module.__class__ = pruned_class(type(module), _forward)
