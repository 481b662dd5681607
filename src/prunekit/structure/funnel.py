"""Heads of Funnel Transformer's relative attention (``FunnelRelMultiheadAttention``).

Head ``h`` owns its rows of ``q_head``/``k_head``/``v_head``, its columns of ``post_proj``, index
``h`` of the per-head biases ``r_w_bias``/``r_r_bias``/``r_s_bias`` ``[n_head, d_head]`` and of the
head dimension of ``r_kernel`` ``[d_model, n_head, d_head]`` and ``seg_embed`` ``[2, n_head,
d_head]``. With its key, position kernel and segment slices gone its scores are zero in both the
relative-shift and the factorized form, and its value is zero: the masked and the shrunk model
agree. Pooling shortens the sequence only, so it does not meet the heads.

The forward reads the count from the shared ``self.config.n_head``: a layer that lost heads gets a
config copy of its own holding its count (the model's config keeps the original count unless
every layer has the same new count; then it is patched and plain ``transformers`` loads the
result). ``pk.load`` rebuilds the copies from the checkpoint's shapes (:meth:`reattach`).
"""

from __future__ import annotations

import copy

from torch import nn

from .heads import HeadAdapter, Heads, _slot, hf_example, register

#: raw parameter -> its head dimension
_PER_HEAD = {"r_w_bias": 0, "r_r_bias": 0, "r_s_bias": 0, "r_kernel": 1, "seg_embed": 1}
_FUNNEL = {"vocab_size": 64, "block_sizes": [1, 1], "d_model": 32, "n_head": 4, "d_head": 8,
           "d_inner": 64}  # fmt: skip


@register(
    "funnel",
    "FunnelRelMultiheadAttention",
    examples=(
        hf_example("FunnelModel", **_FUNNEL),
        hf_example("FunnelBaseModel", **_FUNNEL, attention_type="factorized"),
    ),
)
class FunnelAttention(HeadAdapter):
    """Funnel (``q_head``/``k_head``/``v_head``/``post_proj``, per-head relative tables)."""

    q, k, v, o = "q_head", "k_head", "v_head", "post_proj"

    def matches(self, module: nn.Module) -> bool:
        return super().matches(module) and hasattr(getattr(module, "config", None), "d_head")

    def head_dim(self, module: nn.Module) -> int:
        return module.config.d_head

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        heads = super().layout(prefix, module)
        heads.per_head = [_slot(prefix, module, "", a, dim) for a, dim in _PER_HEAD.items()]
        return heads

    def resize(self, module: nn.Module) -> None:
        """The counts live in the layer's own config copy, which :meth:`reattach` makes."""

    def reattach(self, module: nn.Module) -> None:
        n = module.q_head.weight.shape[0] // module.config.d_head
        if n != module.config.n_head:  # this layer's own count; the other layers' stay
            module.config = copy.copy(module.config)
            module.config.n_head = n
