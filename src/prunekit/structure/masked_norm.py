"""Masked LayerNorm: while channels of its input are pruned, normalise over the kept ones only.

A LayerNorm over ``D`` channels of which ``D - D'`` are pruned (zero inputs, zero weight and
bias) would still take its mean and variance over all ``D``, so removing the channels would
change every output. While masked, the module's output is recomputed over the kept channels: the
masked model then computes exactly what the shrunk one (a LayerNorm over ``D'``) computes, and
``pk.shrink`` verifies that. Registered in :data:`prunekit.masks.MASKED_FORWARD`, so it follows
every masked LayerNorm through copies, saving and loading.
"""

from __future__ import annotations

import torch
from torch import nn

from ..masks import MASKED_FORWARD, get_mask

#: ``data_format`` of LayerNorm subclasses (ConvNeXt-style) -> the dimension they normalise
DATA_FORMATS = {"channels_last": -1, "channels_first": 1}


def norm_dim(module: nn.Module) -> int | None:
    """The channel dimension of a LayerNorm whose channels can go (``None``: it cannot): one
    normalised dimension, a weight to mask, and the forward of ``nn.LayerNorm`` (or a
    ConvNeXt-style subclass that only moves ``data_format``'s channel dimension last)."""
    if not (
        isinstance(module, nn.LayerNorm)
        and isinstance(module.weight, torch.Tensor)
        and len(module.normalized_shape) == 1
    ):
        return None
    if type(module).forward is nn.LayerNorm.forward:
        return -1
    return DATA_FORMATS.get(getattr(module, "data_format", None))


def masked_layer_norm(module: nn.LayerNorm, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
    """Forward hook: LayerNorm over the channels its weight mask keeps (``None``: keep ``out``)."""
    mask = get_mask(module, "weight")
    dim = norm_dim(module)
    if mask is None or dim is None or bool(mask.all()):
        return None
    x = args[0].movedim(dim, -1)  # [..., D]
    keep = mask.to(x.dtype)  # [D]
    n = keep.sum().clamp_min(1)  # a norm with no channel left (a removed layer) gives zeros
    mean = (x * keep).sum(-1, keepdim=True) / n
    centred = (x - mean) * keep
    var = centred.pow(2).sum(-1, keepdim=True) / n
    y = centred * torch.rsqrt(var + module.eps) * module.weight
    y = y + module.bias if module.bias is not None else y
    return y.movedim(-1, dim)


MASKED_FORWARD[nn.LayerNorm] = masked_layer_norm
