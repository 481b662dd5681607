"""Heads of ProphetNet's decoder n-gram self-attention.

``ProphetNetNgramSelfAttention`` runs a main stream and ``ngram`` predict streams through the same
projections, so its heads are plain blocks of ``query_proj``/``key_proj``/``value_proj`` rows and
``out_proj`` columns. Its relative position biases are not per head: ``relative_pos_embeddings``
(``hidden -> num_buckets * heads``) is read per head by the main stream, but the predict streams
gather from its rows laid out (batch, token, stream, head) with bucket rows laid out (stream,
batch, head, token) and read the result as (batch, stream, head, token), so a head's predict bias
comes from other heads' (and tokens') rows. Cutting a head's share of that table would change the
heads that stay.

So ``relative_pos_embeddings`` keeps every original head. After pruning the module's class becomes
a subclass whose forward computes the biases of all original heads with the original's own
methods (their count is the table's width over ``num_buckets``), keeps those of the heads that
remain (their original indices: ``bias_heads``, recorded in the shape manifest), and merges the
heads into ``num_attn_heads * head_dim`` channels. A checkpoint gets it back from its shapes and
``bias_heads`` (:meth:`ProphetNetNgramSelfAttention.reattach`). The config cannot describe such a
layer (its head size is ``hidden_size // num_decoder_attention_heads``): plain ``transformers``
refuses the checkpoint by its shapes, ``pk.load`` rebuilds it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .heads import HeadAdapter, hf_example, keep_indices, pruned_class, register

#: the original indices of the heads a layer kept (recorded in the shape manifest)
ATTR = "bias_heads"


class _AllHeads:
    """``module`` seen with its original head count (the width of its bias table), for its own
    bias methods, which read the count from ``self``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.num_attn_heads = module.relative_pos_embeddings.out_features // module.num_buckets

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def _kept_bias(
    self: nn.Module,
    method: str,
    hidden: torch.Tensor,
    weights: torch.Tensor,
    position_ids: torch.Tensor | None,
    buckets: torch.Tensor | None,
    dim: int,
) -> torch.Tensor:
    """The original ``method``'s bias for all original heads, then the kept heads' slices along
    ``dim`` (the head axis of ``weights``, whose shape alone the method reads)."""
    full = _AllHeads(self)
    shape = list(weights.shape)
    shape[dim] = full.num_attn_heads
    like = weights.new_empty(()).expand(shape)
    bias = getattr(type(self), method)(full, hidden, like, position_ids, buckets)
    return bias.index_select(dim, _kept(self, weights.device))


def _kept(self: nn.Module, device: torch.device) -> torch.Tensor:
    return torch.tensor(getattr(self, ATTR), device=device)


def _of_kept(mask: torch.Tensor, dim: int, self: nn.Module) -> torch.Tensor:
    """A mask built with the config's head count (the decoder's), cut to the kept heads."""
    return mask.index_select(dim, _kept(self, mask.device))


def _forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    cache: Any = None,
    attention_mask: torch.Tensor | None = None,
    extended_predict_attention_mask: torch.Tensor | None = None,
    main_relative_position_buckets: torch.Tensor | None = None,
    predict_relative_position_buckets: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ProphetNetNgramSelfAttention.forward`` for the heads in ``self.bias_heads``
    (``num_attn_heads * head_dim`` channels, < the input width), step for step the original's."""
    from transformers.cache_utils import EncoderDecoderCache
    from transformers.models.prophetnet.modeling_prophetnet import softmax

    cache = kwargs.pop("past_key_values", cache)
    b, length, width = hidden_states.shape
    h, d, n = self.num_attn_heads, self.head_dim, self.ngram
    s = length // (1 + n)  # the main stream's length

    def split(x: torch.Tensor) -> list[torch.Tensor]:  # [B, h, T, d] per stream
        return list(x.view(b, -1, h, d).transpose(1, 2).contiguous().chunk(1 + n, dim=2))

    q_main, *q_predict = split(self.query_proj(hidden_states) / (d**0.5))
    k_main, *k_predict = split(self.key_proj(hidden_states))
    v_main, *v_predict = split(self.value_proj(hidden_states))
    h_main, *h_predict = hidden_states.chunk(1 + n, dim=1)
    if cache is not None:
        own = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        k_main, v_main = own.update(k_main, v_main, self.layer_idx)
    drop = {"p": self.attention_dropout, "training": self.training}

    main = torch.einsum("bntc,bncs->bnts", q_main, k_main.transpose(2, 3))
    main = main + _kept_bias(
        self, "get_main_relative_pos_embeddings", h_main, main, position_ids,
        main_relative_position_buckets, 1,
    )  # fmt: skip
    if attention_mask is not None:
        main = main + _of_kept(attention_mask, 1, self)
    main_probs = softmax(main, dim=-1, onnx_trace=self.onnx_trace).type_as(main)
    main_probs = nn.functional.dropout(main_probs, **drop)
    main_out = torch.einsum("bntc,bncs->bnts", main_probs, v_main)
    main_out = self.out_proj(main_out.transpose(1, 2).reshape(b, 1, s, h * d))

    query = torch.stack(q_predict, 1).view(b, n, h, s, d)
    key = torch.stack([torch.cat([k_main, k], 2) for k in k_predict], 1)
    value = torch.cat([torch.cat([v_main, v], 2).unsqueeze(2) for v in v_predict], 2)
    predict = torch.einsum("bnhtc,bnhsc->bnhts", (query, key))  # [B, n, h, S, 2S]
    predict = predict + _kept_bias(
        self, "get_predict_relative_pos_embeddings", torch.stack(h_predict, dim=2), predict,
        position_ids, predict_relative_position_buckets, 2,
    )  # fmt: skip
    if extended_predict_attention_mask is not None:
        mask = extended_predict_attention_mask.permute(0, 2, 1, 3, 4).to(predict.dtype)
        predict = predict + _of_kept(mask, 2, self)
    probs = softmax(predict, dim=-1, onnx_trace=self.onnx_trace).type_as(predict)
    probs = nn.functional.dropout(probs, **drop)
    out = torch.einsum("bnhts,bnhsc->bnhtc", (probs, value.transpose(1, 2)))
    out = self.out_proj(out.transpose(2, 3).reshape(b, n, s, h * d))

    out = torch.cat([main_out, out], 1).view(b, -1, width)
    out = nn.functional.dropout(out, p=self.dropout, training=self.training)
    return out, main_probs.view(b, h, s, -1), probs


@register(
    "prophetnet-ngram",
    "ProphetNetNgramSelfAttention",
    examples=(
        hf_example(  # the decoder alone: n-gram self-attention, no cross-attention
            "ProphetNetForCausalLM", vocab_size=64, hidden_size=32, decoder_ffn_dim=64,
            num_decoder_layers=2, num_decoder_attention_heads=4, max_position_embeddings=64,
            num_buckets=8, relative_max_distance=16,
        ),
    ),
)  # fmt: skip
class ProphetNetNgramSelfAttention(HeadAdapter):
    """ProphetNet's n-gram self-attention: q/k/v rows and ``out_proj`` columns per head; the
    relative position table stays whole."""

    q, k, v, o = "query_proj", "key_proj", "value_proj", "out_proj"
    writes_config = False  # the config's head size and table are those of all heads

    def drop(self, module: nn.Module, heads: list[int]) -> None:
        keep_indices(module, ATTR, module.num_attn_heads, heads)

    def reattach(self, module: nn.Module) -> None:
        if getattr(module, ATTR, None) is not None and type(module).forward is not _forward:
            module.__class__ = pruned_class(type(module), _forward)
