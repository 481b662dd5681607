"""Resizers: after slicing, make a module's size attributes agree with its new tensors.

One function per module type, looked up along the class's MRO by class name (so Hugging Face
classes need no import). Modules with no resizer keep their attributes; their forward must then
read sizes from the tensors.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Resizer = Callable[[nn.Module], None]
RESIZERS: dict[str, Resizer] = {}


def resizer(*class_names: str) -> Callable[[Resizer], Resizer]:
    def add(fn: Resizer) -> Resizer:
        for n in class_names:
            RESIZERS[n] = fn
        return fn

    return add


def resize(module: nn.Module) -> None:
    """Run the resizer registered for the nearest class of ``module``, if any."""
    for cls in type(module).__mro__:
        fn = RESIZERS.get(cls.__name__)
        if fn is not None:
            fn(module)
            return


@resizer("Linear")
def _linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


@resizer("_ConvNd")
def _conv(m: nn.Module) -> None:
    out, per_group = m.weight.shape[:2]
    if m.groups > 1 and m.groups == m.in_channels:  # depthwise stays depthwise
        mult = m.out_channels // m.in_channels
        m.in_channels = m.groups = out // mult
    else:
        m.in_channels = per_group * m.groups
    m.out_channels = out


@resizer("_NormBase")
def _batch_norm(m: nn.Module) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = t.shape[0]


@resizer("LayerNorm")
def _layer_norm(m: nn.LayerNorm) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


@resizer("GroupNorm")
def _group_norm(m: nn.GroupNorm) -> None:
    if m.weight is not None:
        per_channel = m.num_groups == m.num_channels
        m.num_channels = m.weight.shape[0]
        if per_channel:
            m.num_groups = m.num_channels


@resizer("Embedding")
def _embedding(m: nn.Embedding) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@resizer("Conv1D")
def _hf_conv1d(m: nn.Module) -> None:
    m.nf = m.weight.shape[1]
    if hasattr(m, "nx"):
        m.nx = m.weight.shape[0]
