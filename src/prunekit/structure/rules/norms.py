"""Normalisation layers.

Batch and instance norm keep channels apart. A group norm module with several channels per group
loses whole groups (a group's channels are one unit: a zeroed group normalises to zero and leaves
the others' statistics alone); a functional ``group_norm`` with such groups keeps its channels.

A LayerNorm module with a weight normalises over
its kept channels while masked (see :mod:`..masked_norm`), so its channels go like any other; a
functional ``layer_norm`` (or a LayerNorm without weight) keeps them. An RMS norm module folds
the lost channels into its weight and eps at shrink time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import Call
from ..propagate import Example, Rule, State, arg, register
from ._examples import IMAGE, VEC, Fn, cnn_around, mlp_around
from .linear import bind, consume


def _per_channel(call: Call, st: State, params: list) -> torch.Tensor:
    """Channels of ``x`` (dim 1) bound to ``params``; the output keeps them."""
    x = call.args[0]
    c = st.fresh(x.shape[1])
    consume(st, call, st.small(x), c, 1)
    for p in params:
        bind(st, p, 0, c)
    st.set(call.out, c.view(1, -1, *([1] * (call.out.dim() - 2))))
    return c


class BatchNorm(Rule):
    """Batch and instance norm: statistics per channel, so channels stay independent."""

    ops = ("batch_norm", "instance_norm")
    examples = (Example(lambda: cnn_around(nn.BatchNorm2d(16).eval()), IMAGE),)

    def apply(self, call: Call, st: State) -> None:
        params = [
            arg(call, i, n)
            for i, n in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
        ]
        _per_channel(call, st, params)


class GroupNorm(Rule):
    """Channels of one group go together; the resizer keeps the channels per group."""

    ops = ("group_norm",)
    examples = (
        Example(lambda: cnn_around(nn.GroupNorm(16, 16)), IMAGE),
        Example(lambda: cnn_around(nn.GroupNorm(4, 16)), IMAGE),
        Example(lambda: cnn_around(lambda h: F.group_norm(h, 4)), IMAGE, shrinks=False),
    )

    def apply(self, call: Call, st: State) -> None:
        x, groups, w = call.args[0], arg(call, 1, "num_groups"), arg(call, 2, "weight")
        c = _per_channel(call, st, [w, arg(call, 3, "bias")])
        if groups == x.shape[1]:
            return
        owner = st.graph.owner(w) if isinstance(w, torch.Tensor) else None
        if owner is None or not isinstance(owner[1], nn.GroupNorm):  # num_groups fixed by code
            st.block(c, call, f"group_norm with {groups} groups mixes channels in its statistics")
            return
        per = c.view(groups, -1)  # [groups, channels per group]
        st.join(per, per[:, :1])


class LayerNorm(Rule):
    """Normalises over the last ``len(normalized_shape)`` dimensions."""

    ops = ("layer_norm", "rms_norm")
    examples = (
        Example(lambda: mlp_around(Fn(lambda h: torch.layer_norm(h, (16,)))), VEC, shrinks=False),
    )

    def apply(self, call: Call, st: State) -> None:
        x, ns = call.args[0], arg(call, 1, "normalized_shape")
        params = [arg(call, 2, "weight"), arg(call, 3, "bias")]
        k = len(ns) if isinstance(ns, (tuple, list, torch.Size)) else 1
        size = math.prod(x.shape[-k:])
        c = st.fresh(size)
        a = st.small(x)
        if a is not None:
            a = a.expand(*a.shape[:-k], *x.shape[-k:]).reshape(*a.shape[:-k], size)
        consume(st, call, a, c, -1)
        for p in params:
            if isinstance(p, torch.Tensor) and st.owned(p):
                st.join(st.atoms(p).reshape(-1), c) if p.dim() > 1 else bind(st, p, 0, c)
        st.block(c, call, f"{call.name} normalizes over the channel dimension")
        st.set(call.out, c.view(*x.shape[-k:]))


class _ChannelsFirstNorm(nn.LayerNorm):
    """A ConvNeXt-style LayerNorm over dimension 1 of ``[N, C, H, W]``."""

    data_format = "channels_first"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class NormModule(Rule):
    """An RMS norm or LayerNorm module, recorded as one call by the trace: channels stay separate
    up to per-row statistics that are corrected exactly. An RMS norm shrinks with its weight
    times sqrt(D/D') and eps times D/D' (:func:`..shrink.rescale_rms_norms`); a masked LayerNorm
    normalises over its kept channels (:mod:`..masked_norm`)."""

    ops = ("rms_norm_module", "layer_norm_module")
    examples = (
        Example(lambda: mlp_around(nn.RMSNorm(16, eps=1e-6)), VEC),
        Example(lambda: mlp_around(nn.LayerNorm(16)), VEC),
        Example(lambda: cnn_around(_ChannelsFirstNorm(16)), IMAGE),
    )

    def apply(self, call: Call, st: State) -> None:
        x, w, *bias = call.args
        dim = call.kwargs["dim"] % x.dim()
        c = st.wdim(w, 0)
        consume(st, call, st.small(x), c, dim)
        for b in bias:
            bind(st, b, 0, c)
        st.set(call.out, c.view(-1, *([1] * (x.dim() - 1 - dim))))


register("batch-norm", BatchNorm())
register("group-norm", GroupNorm())
register("layer-norm", LayerNorm())
register("norm-module", NormModule())
