"""``nn.MultiheadAttention`` derives its head size from its input width: neither can change."""

from __future__ import annotations

import torch
from torch import nn

from ..graph import Call
from ..propagate import Example, Rule, State, register
from ._examples import randn


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


register("torch-mha", TorchMHA())
