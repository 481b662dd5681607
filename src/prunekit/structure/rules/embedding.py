"""Embedding lookups: the output channels are the table's columns."""

from __future__ import annotations

from torch import nn

from ..graph import Call
from ..propagate import Example, Rule, State, arg, register
from ._examples import Fn, tokens
from .linear import refuse_non_parameter


class Embedding(Rule):
    ops = ("embedding",)
    examples = (
        Example(
            lambda: nn.Sequential(nn.Embedding(10, 16), Fn(lambda h: h.relu()), nn.Linear(16, 4)),
            tokens(),
        ),
    )

    def apply(self, call: Call, st: State) -> None:
        w = arg(call, 1, "weight")
        if refuse_non_parameter(st, call, w):
            return
        st.set(call.out, st.wdim(w, 1))


register("embedding", Embedding())
