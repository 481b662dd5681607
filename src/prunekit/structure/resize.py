"""Resizers: after slicing, make a module's size attributes agree with its new tensors.

One function per module type, registered in :data:`RESIZERS` under the class name and looked up
along the class's MRO (so Hugging Face classes need no import). Modules with no resizer keep their
attributes; their forward must then read sizes from the tensors. Each resizer's examples are tiny
models whose 50% channel pruning resizes a module of its class (run by the contract tests).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..registry import Registry
from .propagate import Example
from .rules._examples import IMAGE, VEC, Fn, cnn_around, mlp_around, randn, tokens
from .rules.linear import hf_conv1d
from .rules.recurrent import _Around

Resizer = Callable[[nn.Module], None]
VEC3 = randn(2, 5, 8)
RESIZERS: Registry[Resizer] = Registry("resizer")


def resize(module: nn.Module) -> None:
    """Run the resizer registered for the nearest class of ``module``, if any."""
    for cls in type(module).__mro__:
        if cls.__name__ in RESIZERS:
            RESIZERS.get(cls.__name__)(module)
            return


@RESIZERS.register("Linear", examples=[Example(lambda: mlp_around(torch.relu), VEC)])
def _linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


@RESIZERS.register(
    "_ConvNd",
    examples=[Example(lambda: cnn_around(torch.relu, nn.Conv2d(16, 4, 3, groups=4)), IMAGE)],
)
def _conv(m: nn.Module) -> None:
    if m.transposed:  # ConvTranspose: [in, out / groups, *k]
        m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        return
    out, per_group = m.weight.shape[:2]
    if m.groups > 1 and m.groups == m.in_channels:  # depthwise stays depthwise
        mult = m.out_channels // m.in_channels
        m.in_channels = m.groups = out // mult
    else:
        m.in_channels = per_group * m.groups
    m.out_channels = out


@RESIZERS.register("_NormBase", examples=[Example(lambda: cnn_around(nn.BatchNorm2d(16)), IMAGE)])
def _batch_norm(m: nn.Module) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = t.shape[0]


@RESIZERS.register("LayerNorm", examples=[Example(lambda: mlp_around(nn.LayerNorm(16)), VEC)])
@RESIZERS.register("RMSNorm", examples=[Example(lambda: mlp_around(nn.RMSNorm(16, eps=1e-6)), VEC)])
def _layer_norm(m: nn.LayerNorm) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


@RESIZERS.register("GroupNorm", examples=[Example(lambda: cnn_around(nn.GroupNorm(4, 16)), IMAGE)])
def _group_norm(m: nn.GroupNorm) -> None:
    if m.weight is not None:  # whole groups went: the channels per group stay
        per_group = m.num_channels // m.num_groups
        m.num_channels = m.weight.shape[0]
        m.num_groups = m.num_channels // per_group


@RESIZERS.register(
    "RNNBase",
    examples=[Example(lambda: _Around(nn.LSTM(16, 12, num_layers=2, batch_first=True)), VEC3)],
)
def _recurrent(m: nn.RNNBase) -> None:
    m.input_size, m.hidden_size = m.weight_ih_l0.shape[1], m.weight_hh_l0.shape[1]
    m._init_flat_weights()  # the sliced tensors went into _parameters directly


@RESIZERS.register(
    "Embedding",
    examples=[
        Example(
            lambda: nn.Sequential(nn.Embedding(10, 16), Fn(torch.relu), nn.Linear(16, 4)), tokens()
        )
    ],
)
def _embedding(m: nn.Embedding) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@RESIZERS.register("Conv1D", examples=[Example(hf_conv1d, VEC)])
def hf_conv1d(m: nn.Module) -> None:
    m.nf = m.weight.shape[1]
    if hasattr(m, "nx"):
        m.nx = m.weight.shape[0]
