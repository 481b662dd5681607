"""Heads of ProphetNet's plain attention (encoder self-attention, decoder cross-attention).

``ProphetNetAttention`` reshapes the heads' output to the width of its input hidden states (a
local value) and checks that its attention mask has ``num_attn_heads`` rows, which the encoder
and decoder build from the config's head count (the same mask repeated per head). Its heads are
plain blocks of ``query_proj``/``key_proj``/``value_proj`` rows and ``out_proj`` columns. After
pruning the module's class becomes a subclass whose forward merges the heads into
``num_attn_heads * head_dim`` channels and reads the mask's first head row (every row is the
same); a checkpoint gets it back from its shapes (:meth:`ProphetNetAttention.reattach`). The
decoder's n-gram self-attention is served by :mod:`.prophetnet_ngram`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .heads import HeadAdapter, hf_example, pruned_class, register
from .narrow import keys_values


def _forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    key_value_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    cache: Any = None,
    output_attentions: bool | None = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``ProphetNetAttention.forward`` with ``num_attn_heads * head_dim`` (< the input width)
    channels; the cache handling is the original's."""
    cache = kwargs.pop("past_key_values", cache)
    b, t, _ = hidden_states.shape
    h, d = self.num_attn_heads, self.head_dim
    cross = key_value_states is not None
    query = self.query_proj(hidden_states) / (d**0.5)
    states = key_value_states if cross else hidden_states
    key, value = keys_values(self, states, cross, cache, kwargs=kwargs)
    query = query.view(b, t, h, d).transpose(1, 2)
    weights = torch.einsum("bsij,bsjk->bsik", query, key.transpose(2, 3))
    if attention_mask is not None and attention_mask.dim() == 0:
        attention_mask = None
    if attention_mask is not None:  # built with the config's head count: rows are the same
        weights = weights + attention_mask[:, :1]
    reshaped = weights if output_attentions else None
    probs = nn.functional.dropout(
        nn.functional.softmax(weights, dim=-1), p=self.attention_dropout, training=self.training
    )
    out = torch.einsum("bsij,bsjk->bsik", probs, value).transpose(1, 2).reshape(b, t, h * d)
    out = nn.functional.dropout(self.out_proj(out), p=self.dropout, training=self.training)
    return out, reshaped


@register(
    "prophetnet",
    "ProphetNetAttention",
    examples=(
        hf_example(
            "ProphetNetEncoder", vocab_size=64, hidden_size=32, encoder_ffn_dim=64,
            num_encoder_layers=1, num_encoder_attention_heads=4, max_position_embeddings=64,
        ),
    ),
)  # fmt: skip
class ProphetNetAttention(HeadAdapter):
    """ProphetNet: ``query_proj``/``key_proj``/``value_proj`` rows and ``out_proj`` columns."""

    q, k, v, o = "query_proj", "key_proj", "value_proj", "out_proj"

    def reattach(self, module: nn.Module) -> None:
        narrow = module.num_attn_heads * module.head_dim != module.out_proj.out_features
        if narrow and type(module).forward is not _forward:
            module.__class__ = pruned_class(type(module), _forward)
