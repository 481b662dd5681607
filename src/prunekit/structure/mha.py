"""Heads of ``torch.nn.MultiheadAttention``.

Its forward derives the head size from the query width (``embed_dim // num_heads``), so a module
that lost heads cannot run it. After head pruning the module becomes a
:class:`HeadPrunedMultiheadAttention`: the same class underneath (same parameters, same
``state_dict`` keys, same constructor), whose forward reads the head count and head size from its
attributes and the inner width ``num_heads * head_dim`` from its tensors. A checkpoint of it is
rebuilt from a plain ``nn.MultiheadAttention`` by the shape manifest; :meth:`reattach` then swaps
the class back (the loader calls it), because the shapes alone tell that heads are gone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .heads import HeadAdapter, Heads, _slot, register
from .propagate import Example


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with ``num_heads * head_dim`` smaller than ``embed_dim``.

    Supports what ``nn.MultiheadAttention`` does (batch-first or not, unbatched inputs, separate
    key/value widths, ``bias_k``/``bias_v``, ``add_zero_attn``, boolean or float ``attn_mask`` of
    shape ``[L, S]`` or ``[batch * num_heads, L, S]`` for the heads that remain, key padding masks,
    ``is_causal``, dropout in training). Averaged attention weights are the mean over the heads
    that remain.
    """

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # [L, E] -> [1, L, E]
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # [L, B, E] -> [B, L, E]
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        h, d = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.chunk(3)  # [h * d, E] each
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        b, n = q.shape[:2]
        mask = _additive(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:  # [B * h, L, S] -> [B, h, L, S]
            mask = mask.view(b, h, n, -1)
        pad = _additive(key_padding_mask, q.dtype)
        if pad is not None:
            pad = pad.view(b, 1, 1, -1)  # [B, S] -> [B, 1, 1, S]
        if self.bias_k is not None and self.bias_v is not None:  # one more key: [1, 1, h * d]
            k = torch.cat([k, self.bias_k.expand(b, 1, -1)], 1)
            v = torch.cat([v, self.bias_v.expand(b, 1, -1)], 1)
            mask, pad = _one_more_key(mask), _one_more_key(pad)
        q, k, v = (t.view(b, -1, h, d).transpose(1, 2) for t in (q, k, v))  # [B, h, T, d]
        if self.add_zero_attn:
            zeros = k.new_zeros(b, h, 1, d)
            k, v = torch.cat([k, zeros], 2), torch.cat([v, zeros], 2)
            mask, pad = _one_more_key(mask), _one_more_key(pad)
        if pad is not None:
            mask = pad if mask is None else mask + pad
        if is_causal and mask is None:
            s = k.shape[2]
            mask = torch.full((n, s), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # [B, h, L, S]
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = F.dropout(weights, p) @ v
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights if batched else weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))  # [B, L, E]
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: not attended) as 0 / -inf; a float mask as it is."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def _one_more_key(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else F.pad(mask, (0, 1))


class _Block(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.attn(h, h, h, need_weights=False)[0]


def _inputs() -> torch.Tensor:
    return torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))


@register(
    "torch-mha",
    "MultiheadAttention",
    examples=(
        Example(_Block, _inputs),
        Example(lambda: _Block(add_bias_kv=True, add_zero_attn=True), _inputs),
    ),
)
class TorchMultiheadAttention(HeadAdapter):
    """``nn.MultiheadAttention``: q, k, v rows in ``in_proj_weight`` (or ``q/k/v_proj_weight``
    where key and value widths differ), ``in_proj_bias``, ``bias_k``/``bias_v`` and the columns of
    ``out_proj``. The query width (``embed_dim``) stays."""

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention)

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        h, d = module.num_heads, module.head_dim
        inner = h * d
        heads = Heads(h, h, d)
        heads.q = [(_slot(prefix, module, "out_proj", "weight", 1), 0)]
        if module._qkv_same_embed_dim:
            w = _slot(prefix, module, "", "in_proj_weight", 0)
            heads.q.append((w, 0))
            heads.kv += [(w, inner), (w, 2 * inner)]
        else:
            heads.q.append((_slot(prefix, module, "", "q_proj_weight", 0), 0))
            heads.kv += [(_slot(prefix, module, "", f"{c}_proj_weight", 0), 0) for c in "kv"]
        b = _slot(prefix, module, "", "in_proj_bias", 0)
        if b is not None:
            heads.q.append((b, 0))
            heads.kv += [(b, inner), (b, 2 * inner)]
        for attr in ("bias_k", "bias_v"):  # [1, 1, h * d]
            s = _slot(prefix, module, "", attr, 2)
            if s is not None:
                heads.kv.append((s, 0))
        return heads

    def counts(self, module: nn.Module) -> tuple[int, int, int]:
        return module.num_heads, module.num_heads, module.head_dim

    def resize(self, module: nn.Module) -> None:
        module.num_heads = module.out_proj.weight.shape[1] // module.head_dim

    def reattach(self, module: nn.Module) -> None:
        if module.num_heads * module.head_dim != module.embed_dim:
            module.__class__ = HeadPrunedMultiheadAttention
