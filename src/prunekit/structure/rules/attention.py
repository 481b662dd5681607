"""Attention calls: ``scaled_dot_product_attention`` (read by head mode) and
``nn.MultiheadAttention``, which derives its head size from its input width: neither can change."""

from __future__ import annotations

import torch
from torch import nn

from ..attention_pattern import fold_heads, heads_fold
from ..graph import Call
from ..propagate import Example, Rule, State, register
from ._examples import VEC, mlp_around, randn
from .linear import PRODUCT


class ScaledDotProductAttention(Rule):
    """Attention multiplies q with k and weights v: its channels stay. In head mode
    (:mod:`..attention`) the call is recorded, and its output gets fresh per-head channel ids
    ``[1, H, 1, d]`` so that the output projection's columns can be traced back to each head.
    Over ``[batch * heads, tokens, d]`` (heads folded into the batch) the head count is read from
    how the queries' channel ids repeat along the first dimension."""

    ops = ("scaled_dot_product_attention",)
    examples = (Example(lambda: mlp_around(_self_attention), VEC, shrinks=False),)

    def apply(self, call: Call, st: State) -> None:
        out = call.out
        q = st.small(call.args[0]) if call.args else None
        if not st.heads or not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
            PRODUCT.apply(call, st)
            return
        if out.dim() == 4:
            _, h, _, d = out.shape
            slots = st.fresh(h * d).view(1, h, 1, d)
            st.attention.append((call, slots))
            st.set(out, slots)
            return
        if q is None or q.dim() != 3:
            PRODUCT.apply(call, st)
            return
        (h, outer), (n, _, d) = heads_fold(q), out.shape
        slots = st.fresh(h * d).view(1, h, 1, d)
        st.attention.append((call, slots))
        st.set(out, fold_heads(slots.expand(n // h, h, 1, d), outer))


def _self_attention(h: torch.Tensor) -> torch.Tensor:
    x = h.view(len(h), 1, 4, 4).transpose(1, 2)  # [B, heads, T=1, d]
    return torch.nn.functional.scaled_dot_product_attention(x, x, x).reshape(len(h), 16)


class _MHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.attn(h, h, h, need_weights=False)[0]


class TorchMHA(Rule):
    ops = ("multi_head_attention_forward", "_native_multi_head_attention")
    examples = (Example(_MHA, randn(2, 5, 8), shrinks=False),)

    def apply(self, call: Call, st: State) -> None:
        st.refuse(call, "nn.MultiheadAttention ties its width to its heads")


register("sdpa", ScaledDotProductAttention())
register("torch-mha", TorchMHA())
