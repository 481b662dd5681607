"""Heads of Longformer's attention (``LongformerAttention``) and LED's encoder attention.

The self-attention (``LongformerSelfAttention``) holds one block of rows per head in
``query``/``key``/``value`` and in the global projections ``query_global``/``key_global``/
``value_global``; the output projection that takes its heads' columns is in the parent
(``output.dense``, LED: ``output``), so the adapter serves the parent. Its forward reshapes the
heads' output to the width of its input (a local value, asserted equal to ``embed_dim``), so
after pruning the self-attention's class becomes a subclass whose forward merges
``num_heads * head_dim`` channels, built from the module's own helpers (sliding-window chunks,
global keys and global queries) in the original's order; ``embed_dim`` stays the input width
(the global queries are gathered at that width). A checkpoint gets the class back from its
shapes (:meth:`LongformerAttention.reattach`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .heads import BertAttention, Heads, _get, _linear_slots, hf_example, pruned_class, register
from .resize import RESIZERS


def _local_scores(self: nn.Module, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor):
    """``[B, T, heads, 2w + 1]`` sliding-window scores, padding (``mask != 0``) at the lowest
    value: the original's steps."""
    window = self.one_sided_attn_window_size
    scores = self._sliding_chunks_query_key_matmul(query, key, window)
    remove = (mask != 0)[:, :, None, None]
    float_mask = remove.type_as(query).masked_fill(remove, torch.finfo(query.dtype).min)
    ones = float_mask.new_ones(size=float_mask.size())
    return scores + self._sliding_chunks_query_key_matmul(ones, float_mask, window)


def _forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    is_index_masked: torch.Tensor | None = None,
    is_index_global_attn: torch.Tensor | None = None,
    is_global_attn: bool | None = None,
    output_attentions: bool = False,
) -> tuple[Any, ...]:
    """``LongformerSelfAttention.forward`` with ``num_heads * head_dim`` (< the input width)
    channels: local and global attention, masks and dropout as the original."""
    hidden_states = hidden_states.transpose(0, 1)  # [T, B, E]
    t, b, _ = hidden_states.shape
    h, d = self.num_heads, self.head_dim

    def heads(x: torch.Tensor) -> torch.Tensor:  # [T, B, h * d] -> [B, T, h, d]
        return x.view(t, b, h, d).transpose(0, 1)

    query = heads(self.query(hidden_states) / math.sqrt(d))
    key = heads(self.key(hidden_states))
    scores = _local_scores(self, query, key, attention_mask)
    if is_global_attn:
        n, where, local, local_not = self._get_global_attn_indices(is_index_global_attn)
        found = {
            "max_num_global_attn_indices": n,
            "is_index_global_attn_nonzero": where,
            "is_local_index_global_attn_nonzero": local,
        }
        global_scores = self._concat_with_global_key_attn_probs(
            query_vectors=query,
            key_vectors=key,
            is_local_index_no_global_attn_nonzero=local_not,
            **found,
        )
        scores = torch.cat((global_scores, scores), dim=-1)
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32)
    probs = torch.masked_fill(probs, is_index_masked[:, :, None, None], 0.0).type_as(scores)
    probs = nn.functional.dropout(probs, p=self.dropout, training=self.training)
    value = heads(self.value(hidden_states))
    if is_global_attn:
        out = self._compute_attn_output_with_global_indices(
            value_vectors=value, attn_probs=probs, **found
        )
    else:
        out = self._sliding_chunks_matmul_attn_probs_value(
            probs, value, self.one_sided_attn_window_size
        )
    out = out.transpose(0, 1).reshape(t, b, h * d).contiguous()
    global_probs = None
    if is_global_attn:
        global_out, global_probs = self._compute_global_attn_output_from_hidden(
            hidden_states=hidden_states,
            is_local_index_no_global_attn_nonzero=local_not,
            is_index_masked=is_index_masked,
            **found,
        )
        out[where[::-1]] = global_out[local[0], :, local[1]].view(len(local[0]), -1)
        probs[where] = 0  # filler values for global tokens, as the original
    outputs = (out.transpose(0, 1),) + ((probs,) if output_attentions else ())
    return (*outputs, global_probs) if is_global_attn and output_attentions else outputs


_LED = {"vocab_size": 64, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
        "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64, "attention_window": 4, "max_encoder_position_embeddings": 64,
        "max_decoder_position_embeddings": 64}  # fmt: skip


@register(
    "longformer",
    "LongformerAttention",
    examples=(
        hf_example(
            "LongformerForMaskedLM", vocab_size=64, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=4, intermediate_size=64, attention_window=4,
        ),
    ),
)  # fmt: skip
class LongformerAttention(BertAttention):
    """Longformer: ``self.query``/``key``/``value`` and their ``*_global`` twins, then the
    ``output.dense`` columns; the counts live in ``self``."""

    #: the global query, key and value projections
    global_paths: tuple[str, ...] = ("self.query_global", "self.key_global", "self.value_global")

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        heads = super().layout(prefix, module)
        q, k, v = self.global_paths
        heads.q += _linear_slots(prefix, module, q, True)
        heads.kv += _linear_slots(prefix, module, k, True) + _linear_slots(prefix, module, v, True)
        return heads

    def reattach(self, module: nn.Module) -> None:
        _self_attention(_get(module, self.holder))


@register(
    "led-encoder",
    "LEDEncoderAttention",
    examples=(hf_example("LEDForConditionalGeneration", **_LED),),
)
class LEDEncoderAttention(LongformerAttention):
    """LED's encoder: Longformer's self-attention as ``longformer_self_attn``, then ``output``."""

    q, k, v = "longformer_self_attn.query", "longformer_self_attn.key", "longformer_self_attn.value"
    o = "output"
    holder = "longformer_self_attn"
    global_paths = tuple(f"longformer_self_attn.{p}_global" for p in ("query", "key", "value"))


@RESIZERS.register(
    "LongformerSelfAttention",
    examples=[
        hf_example(
            "LongformerForMaskedLM", vocab_size=64, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=4, intermediate_size=64, attention_window=4,
        )
    ],
)  # fmt: skip
@RESIZERS.register("LEDEncoderSelfAttention", examples=[hf_example("LEDModel", **_LED)])
def _self_attention(attn: nn.Module) -> None:
    """``embed_dim`` is the width of the input (the hidden width, which channel pruning may
    narrow); where the heads' width differs from it, the forward that merges
    ``num_heads * head_dim`` channels."""
    attn.embed_dim = attn.query.in_features
    narrow = attn.num_heads * attn.head_dim != attn.embed_dim
    if narrow and type(attn).forward is not _forward:
        attn.__class__ = pruned_class(type(attn), _forward)
