"""Heads of DeBERTa (v1) disentangled attention: one fused ``in_proj`` interleaved per head.

``DisentangledSelfAttention`` views ``in_proj``'s output as ``[B, T, heads, 3d]`` and chunks the
last dimension into q, k and v: head ``h`` owns rows ``[3d * h, 3d * (h + 1))``, its query first.
Besides those rows a head owns its slices of ``q_bias`` and ``v_bias``, the rows of the relative
position projections (``pos_proj`` for c2p, ``pos_q_proj`` for p2c), the columns of the output
projection and, with talking heads, the row and column of ``head_logits_proj`` and
``head_weights_proj`` (``[heads, heads]`` mixes of the scores and probabilities). With a
head's q, k and position rows gone, its scores are zero; the mixes read none of it once its
column is gone, and its mixed probabilities meet a zero value once its row is gone, so the masked
model and the shrunk one compute the same. The head size is ``hidden_size // heads`` in the
config, so a head-pruned DeBERTa loads through ``pk.load`` (the shape manifest holds the counts).
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import HeadAdapter, Heads, _linear_slots, _slot, hf_example, register

_DEBERTA = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
            "intermediate_size": 64, "relative_attention": True, "pos_att_type": ["p2c", "c2p"],
            "max_relative_positions": 8}  # fmt: skip


@register(
    "deberta",
    "DebertaAttention",
    examples=(
        hf_example("DebertaModel", **_DEBERTA),
        hf_example("DebertaModel", **_DEBERTA, talking_head=True),
    ),
)
class DebertaAttention(HeadAdapter):
    """DeBERTa v1 (``in_proj`` with per-head ``[q | k | v]`` rows, ``q_bias``, ``v_bias``)."""

    holder = "self"

    def matches(self, module: nn.Module) -> bool:
        attn = getattr(module, "self", None)
        return isinstance(getattr(attn, "in_proj", None), nn.Linear) and isinstance(
            getattr(getattr(module, "output", None), "dense", None), nn.Linear
        )

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        d = module.self.attention_head_size
        h = module.self.in_proj.weight.shape[0] // (3 * d)
        heads = Heads(h, h, d)
        base = torch.arange(h)[:, None] * 3 * d  # [h, 1]: first row of each head
        fused = [_slot(prefix, module, "self.in_proj", a, 0) for a in ("weight", "bias")]
        fused = [s for s in fused if s is not None]
        heads.q_index = [(s, base + torch.arange(d)) for s in fused]  # [h, d]
        heads.kv_index = [(s, base + d + torch.arange(2 * d)) for s in fused]  # [h, 2d]
        for attr, into in (("q_bias", heads.q), ("v_bias", heads.kv)):
            s = _slot(prefix, module, "self", attr, 0)
            if s is not None:
                into.append((s, 0))
        for path in ("self.pos_proj", "self.pos_q_proj"):
            heads.q += _linear_slots(prefix, module, path, True)
        heads.q += _linear_slots(prefix, module, "output.dense", False)
        for path in ("self.head_logits_proj", "self.head_weights_proj"):
            for dim in (0, 1):
                s = _slot(prefix, module, path, "weight", dim)
                if s is not None:
                    heads.per_head.append(s)
        return heads

    def resize(self, module: nn.Module) -> None:
        attn = module.self
        attn.num_attention_heads = attn.in_proj.weight.shape[0] // (3 * attn.attention_head_size)
        attn.all_head_size = attn.num_attention_heads * attn.attention_head_size
