"""Heads of XLNet's relative attention: raw ``[d_model, heads, d_head]`` projections.

``XLNetRelativeAttention`` holds no Linear layers: its query, key, value, output and position-key
projections are parameters ``q``, ``k``, ``v``, ``o``, ``r`` of shape ``[d_model, n_head, d_head]``
used through ``einsum``, with per-head biases ``r_w_bias``, ``r_r_bias``, ``r_s_bias``
``[n_head, d_head]`` and segment embeddings ``seg_embed`` ``[2, n_head, d_head]``. Head ``h`` is
index ``h`` of the head dimension of each. With its k, r and segment slices gone its scores are
zero (the biases add to the query only), its value is zero, so its output is zero: the masked and
the shrunk model agree. ``n_head`` is the one count; ``d_head`` is a config field of its own, so
a uniform result loads in plain ``transformers`` with the patched ``n_head``.
"""

from __future__ import annotations

from torch import nn

from .heads import HeadAdapter, Heads, _slot, hf_example, register

#: parameter -> its head dimension
_PER_HEAD = {"q": 1, "k": 1, "v": 1, "o": 1, "r": 1, "seg_embed": 1, "r_w_bias": 0,
             "r_r_bias": 0, "r_s_bias": 0}  # fmt: skip


@register(
    "xlnet",
    "XLNetRelativeAttention",
    examples=(
        hf_example("XLNetModel", vocab_size=64, d_model=32, n_layer=1, n_head=4, d_inner=64),
    ),
)
class XLNetRelativeAttention(HeadAdapter):
    """XLNet (einsum projections with a head dimension)."""

    def matches(self, module: nn.Module) -> bool:
        return all(getattr(module, a, None) is not None for a in _PER_HEAD) and isinstance(
            getattr(module, "n_head", None), int
        )

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        h, d = module.q.shape[1], module.q.shape[2]
        heads = Heads(h, h, d)
        heads.per_head = [_slot(prefix, module, "", a, dim) for a, dim in _PER_HEAD.items()]
        return heads

    def resize(self, module: nn.Module) -> None:
        module.n_head = module.q.shape[1]
