"""Convolutions: plain, depthwise and grouped."""

from __future__ import annotations

import torch
from torch import nn

from ..graph import Call
from ..propagate import Example, Rule, State, arg, register
from ._examples import IMAGE
from .linear import bind, consume, refuse_non_parameter


class Conv(Rule):
    """Input channels are the weight's dim 1 (per group), output channels its dim 0. A depthwise
    conv ties each output to its input channel; a grouped conv removes the same local index from
    every group so the groups stay equal."""

    ops = ("conv1d", "conv2d", "conv3d")
    examples = (
        Example(
            lambda: nn.Sequential(
                nn.Conv2d(3, 16, 1),
                nn.ReLU(),
                nn.Conv2d(16, 16, 3, groups=16),
                nn.Conv2d(16, 16, 3, groups=4),
                nn.ReLU(),
                nn.Conv2d(16, 4, 1),
            ),
            IMAGE,
        ),
    )

    def apply(self, call: Call, st: State) -> None:
        x, w, b = call.args[0], arg(call, 1, "weight"), arg(call, 2, "bias")
        groups = arg(call, 6, "groups", 1)
        if refuse_non_parameter(st, call, w):
            return
        cin, cout = x.shape[1], w.shape[0]
        rows = st.wdim(w, 0)
        a = st.small(x)
        if groups == 1:
            consume(st, call, a, st.wdim(w, 1), 1)
        elif groups == cin:  # depthwise: output o reads input o // multiplier
            per = cout // cin
            src = torch.arange(cout) // per
            links = st.fresh(cin)
            consume(st, call, a, links, 1)
            st.join(rows, links[src])
        else:  # grouped: a local index is removed from every group, so groups stay equal
            wo = cout // groups
            cols = st.wdim(w, 1)
            links = cols.repeat(groups)  # input channel g * (cin // groups) + j <- column j
            consume(st, call, a, links, 1)
            st.join(rows.view(groups, wo), rows[:wo].expand(groups, wo))
        bind(st, b, 0, rows)
        st.set(call.out, rows.view(1, cout, *([1] * (call.out.dim() - 2))))


register("conv", Conv())


class ConvTranspose(Rule):
    """Transposed convolutions: the weight is ``[in, out / groups, *k]``, so input channels are
    its dim 0 and output channels its dim 1 (one group only)."""

    ops = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
    examples = (
        Example(
            lambda: nn.Sequential(
                nn.Conv2d(3, 16, 3),
                nn.ReLU(),
                nn.ConvTranspose2d(16, 16, 3),
                nn.ReLU(),
                nn.Conv2d(16, 4, 1),
            ),
            IMAGE,
        ),
    )

    def apply(self, call: Call, st: State) -> None:
        x, w, b = call.args[0], arg(call, 1, "weight"), arg(call, 2, "bias")
        if arg(call, 6, "groups", 1) != 1:
            st.refuse(call, "grouped transposed convolution")
            return
        if refuse_non_parameter(st, call, w):
            return
        consume(st, call, st.small(x), st.wdim(w, 0), 1)
        cols = st.wdim(w, 1)
        bind(st, b, 0, cols)
        st.set(call.out, cols.view(1, -1, *([1] * (call.out.dim() - 2))))


class PReLU(Rule):
    """``prelu(x, a)``: one slope per channel (dim 1), or one shared by all."""

    ops = ("prelu",)
    examples = (
        Example(
            lambda: nn.Sequential(nn.Conv2d(3, 16, 3), nn.PReLU(16), nn.Conv2d(16, 4, 1)), IMAGE
        ),
    )

    def apply(self, call: Call, st: State) -> None:
        x, a = call.args[0], arg(call, 1, "weight")
        src = st.small(x)
        if a.numel() > 1 and st.owned(a):
            c = st.fresh(a.shape[0])
            consume(st, call, src, c, 1 if x.dim() > 1 else 0)
            bind(st, a, 0, c)
            st.set(call.out, c.view(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 1 else c)
        else:
            st.set(call.out, src)


register("conv-transpose", ConvTranspose())
register("prelu", PReLU())
