"""Heads of LED's decoder attention (self- and cross-attention).

``LEDDecoderAttention`` attends over ``[batch * heads, tokens, head_dim]`` with ``bmm`` and
reshapes the heads' output to the width of its input (a local value), so it cannot run with fewer
heads. Its heads are plain blocks of ``q_proj``/
``k_proj``/``v_proj`` rows and ``out_proj`` columns. After pruning the module's class becomes a
subclass whose forward merges the heads into ``num_heads * head_dim`` channels; a checkpoint gets
it back from its shapes (:meth:`LEDDecoderAttention.reattach`). LED's encoder attention
(Longformer's) is served by :mod:`.longformer`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .heads import OutProjAttention, hf_example, pruned_class, register
from .narrow import keys_values


def _forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    key_value_states: torch.Tensor | None = None,
    cache: Any = None,
    attention_mask: torch.Tensor | None = None,
    output_attentions: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """``LEDDecoderAttention.forward`` with ``num_heads * head_dim`` (< the input width)
    channels; the cache handling is the original's."""
    cache = kwargs.pop("past_key_values", cache)
    b, t, _ = hidden_states.shape
    h, d = self.num_heads, self.head_dim
    cross = key_value_states is not None
    query = (self.q_proj(hidden_states) * self.scaling).view(b, t, h, d).transpose(1, 2)
    states = key_value_states if cross else hidden_states
    key, value = keys_values(self, states, cross, cache)
    query, key, value = (x.reshape(b * h, -1, d) for x in (query, key, value))
    weights = torch.bmm(query, key.transpose(1, 2))  # [B * h, T, S]
    if attention_mask is not None:
        weights = (weights.view(b, h, t, -1) + attention_mask).view(b * h, t, -1)
    weights = nn.functional.softmax(weights, dim=-1)
    reshaped = weights.view(b, h, t, -1) if output_attentions else None
    probs = nn.functional.dropout(weights, p=self.dropout, training=self.training)
    out = torch.bmm(probs, value).view(b, h, t, d).transpose(1, 2).reshape(b, t, h * d)
    return self.out_proj(out), reshaped, cache


@register(
    "led-decoder",
    "LEDDecoderAttention",
    examples=(
        hf_example(
            "LEDForConditionalGeneration", vocab_size=64, d_model=32, encoder_layers=1,
            decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, attention_window=4,
            max_encoder_position_embeddings=64, max_decoder_position_embeddings=64,
        ),
    ),
)  # fmt: skip
class LEDDecoderAttention(OutProjAttention):
    """LED's decoder: ``q_proj``/``k_proj``/``v_proj`` rows and ``out_proj`` columns."""

    def reattach(self, module: nn.Module) -> None:
        narrow = module.num_heads * module.head_dim != module.out_proj.out_features
        if narrow and type(module).forward is not _forward:
            module.__class__ = pruned_class(type(module), _forward)
