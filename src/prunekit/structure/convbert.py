"""Heads of ConvBERT's mixed attention: self-attention heads and span-based dynamic conv heads.

``ConvBertSelfAttention`` has ``num_attention_heads`` (the config's count divided by
``head_ratio``) heads of size ``d``, each paired with a dynamic convolution head: the output is
``cat([attention [B, T, H, d], conv [B, T, H, d]], dim=2)`` viewed as ``[B, T, 2Hd]``, so the
output projection's columns ``[hd, (h+1)d)`` belong to attention head ``h`` and ``[Hd + hd, Hd +
(h+1)d)`` to conv head ``h``. Both parts read the one count, so head ``h`` of both goes as one
unit: its query, key and value rows; the conv head's rows of ``conv_out_layer`` and its ``k`` rows
of ``conv_kernel_layer`` (``[H * k]`` kernel logits); and, since the conv kernel is computed from
``key_conv_attn_layer(x) * query`` ``[B, T, Hd]``, the head's output rows of the separable conv
and its input columns of ``conv_kernel_layer``. With all of them gone the head's two outputs are
zero and the other conv kernels read zeros where its query was: the masked and the shrunk model
agree. The head size is derived from the config's counts, so the result loads through
``pk.load`` (the shape manifest holds the counts).
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import HeadAdapter, Heads, _linear_slots, _slot, hf_example, register


@register(
    "convbert",
    "ConvBertAttention",
    examples=(
        hf_example(
            "ConvBertModel", vocab_size=64, hidden_size=32, embedding_size=32,
            num_hidden_layers=1, num_attention_heads=8, head_ratio=2, intermediate_size=64,
            conv_kernel_size=3,
        ),
    ),
)  # fmt: skip
class ConvBertAttention(HeadAdapter):
    """ConvBERT (attention heads paired with dynamic conv heads)."""

    q, k, v, o = "self.query", "self.key", "self.value", "output.dense"
    holder = "self"

    def matches(self, module: nn.Module) -> bool:
        attn = getattr(module, "self", None)
        return super().matches(module) and isinstance(
            getattr(attn, "conv_kernel_layer", None), nn.Linear
        )

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        heads = super().layout(prefix, module)
        attn, d = module.self, heads.d
        conv = _slot(prefix, module, "output.dense", "weight", 1)
        heads.q.append((conv, heads.hq * d))  # the conv heads' columns follow the attention's
        heads.q += _linear_slots(prefix, module, "self.conv_out_layer", True)
        heads.q += _linear_slots(prefix, module, "self.conv_kernel_layer", False)
        for path, attr in (("self.key_conv_attn_layer.pointwise", "weight"),
                           ("self.key_conv_attn_layer", "bias")):  # fmt: skip
            heads.q.append((_slot(prefix, module, path, attr, 0), 0))
        k = attn.conv_kernel_size
        kernel = torch.arange(heads.hq)[:, None] * k + torch.arange(k)  # [H, k]
        for s in _linear_slots(prefix, module, "self.conv_kernel_layer", True):
            heads.q_index.append((s[0], kernel))
        return heads
