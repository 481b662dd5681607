"""Grouped matmuls of MoE experts: ``grouped_mm(x [S, in], W [E, in, out], offs) -> [S, out]``.

Transformers 5 runs fused experts (Mixtral, Qwen2-MoE, Qwen3-MoE, ...) as ``_grouped_mm`` over
the tokens sorted by expert, with ``W`` a 3-D parameter ``[E, in, out]`` or the transpose
``P.transpose(-2, -1)`` of one stored ``[E, out, in]``. Every expert reads the same input
channels and writes the same output channels, so a channel is one slice across all experts
(each expert's weight stays a rectangular slice of the fused tensor).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..graph import Call
from ..propagate import Example, Rule, State, arg, register
from ._examples import Fn
from .linear import PRODUCT, consume

_TRANSPOSES = ("transpose", "mT", "swapaxes", "swapdims")


class _Experts(nn.Module):
    """Four experts ``x -> silu(x W1_e) W2_e`` as fused 3-D weights, between two Linears."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 4)
        self.num_experts = 4
        self.up = nn.Parameter(torch.randn(4, 24, 16, generator=g) / 4)  # [E, out, in]
        self.down = nn.Parameter(torch.randn(4, 24, 16, generator=g) / 4)  # [E, in, out]
        self.act = Fn(torch.nn.functional.silu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)  # [S, 16], tokens already sorted by expert
        offs = torch.tensor([1, 2, 2, len(x)], dtype=torch.int32)
        h = self.act(torch._grouped_mm(h, self.up.transpose(-2, -1), offs=offs))
        return self.out(torch._grouped_mm(h, self.down, offs=offs))


def _producers(st: State) -> dict[int, Call]:
    """id(output) -> the call that made it, for the transposes of the trace (built once)."""
    table = st.__dict__.get("_pk_transposes")
    if table is None:
        table = {id(c.out): c for c in st.graph.calls if c.name in _TRANSPOSES}
        st.__dict__["_pk_transposes"] = table
    return table


def expert_weight(st: State, w: Any) -> tuple[torch.Tensor, int, int] | None:
    """(3-D parameter, its input dim, its output dim) behind the ``[E, in, out]`` operand."""
    if not isinstance(w, torch.Tensor) or w.dim() != 3:
        return None
    if st.owned(w):
        return w, 1, 2
    call = _producers(st).get(id(w))
    if call is None or not st.owned(call.args[0]) or call.args[0].dim() != 3:
        return None
    swaps = call.name != "mT"
    dims = [d % 3 for d in call.args[1:3]] if swaps else [1, 2]  # the dims swapped
    return (call.args[0], 2, 1) if sorted(dims) == [1, 2] else None


class GroupedMM(Rule):
    """Grouped matmul of tokens by fused 3-D expert weights."""

    ops = ("_grouped_mm", "grouped_mm", "grouped_mm_fallback")
    examples = (
        Example(_Experts, lambda: torch.randn(6, 8, generator=torch.Generator().manual_seed(0))),
    )

    def apply(self, call: Call, st: State) -> None:
        x, w = call.args[0], arg(call, 1, "mat_b", arg(call, 1, "weight"))
        found = expert_weight(st, w)
        if found is None or x.dim() != 2:
            PRODUCT.apply(call, st)
            return
        p, din, dout = found
        consume(st, call, st.small(x), st.wdim(p, din), -1)
        st.set(call.out, st.wdim(p, dout))


register("grouped-mm", GroupedMM())
