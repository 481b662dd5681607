"""Shared by the adapters whose forward replaces one that reshapes the heads' output to the width
of its input (ProphetNet, LED): the keys and values of an encoder-decoder attention, computed or
taken from a Hugging Face ``EncoderDecoderCache`` exactly as those models' own forwards do."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def keys_values(
    module: nn.Module, states: torch.Tensor, cross: bool, cache: Any, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, heads, S, head_dim]`` keys and values of ``module`` (``k_proj``/``key_proj`` ...) on
    ``states``; cross-attention reuses the cache once it is filled, self-attention updates it."""
    from transformers.cache_utils import EncoderDecoderCache

    project_k = getattr(module, "k_proj", None) or module.key_proj
    project_v = getattr(module, "v_proj", None) or module.value_proj
    heads = getattr(module, "num_heads", None) or module.num_attn_heads
    current, is_updated = cache, False
    if isinstance(cache, EncoderDecoderCache):
        is_updated = cache.is_updated.get(module.layer_idx)
        current = cache.cross_attention_cache if cross else cache.self_attention_cache
    if cross and cache is not None and is_updated:
        layer = current.layers[module.layer_idx]
        return layer.keys, layer.values
    b = states.shape[0]
    key = project_k(states).view(b, -1, heads, module.head_dim).transpose(1, 2)
    value = project_v(states).view(b, -1, heads, module.head_dim).transpose(1, 2)
    if cache is not None:
        key, value = current.update(key, value, module.layer_idx, **kwargs)
        if cross and isinstance(cache, EncoderDecoderCache):
            cache.is_updated[module.layer_idx] = True
    return key, value
