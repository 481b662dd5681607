"""Heads of Reformer's attention (``ReformerAttention``: local or LSH self-attention, then
``output.dense``).

Local self-attention holds one block of ``query``/``key``/``value`` rows per head; LSH
self-attention shares one ``query_key`` projection (its rows per head are both query and key)
beside ``value``. Both run unchanged with fewer heads (``num_attention_heads``, ``all_head_size``
are read from the module), save for one thing: LSH hashes each head's vectors with random
rotations drawn in forward, ``[num_attention_heads, head_size, num_hashes, buckets / 2]`` from the
global generator (reseeded by ``config.hash_seed`` where it is set). A layer with fewer heads
would draw other rotations, and a different amount of random numbers (so every later draw would
move too). So a pruned LSH layer's class becomes a subclass that draws the rotations of all
``config.num_attention_heads`` original heads, as the original does, and hashes each kept head
with the rotations of its original index (``rotation_heads``, recorded in the shape manifest);
a checkpoint gets the class back from it (:meth:`ReformerAttention.reattach`).

The config keeps the original head count (a model rebuilt from it draws the original
rotations), so the adapter writes no counts to it: plain ``transformers`` refuses the shrunk
shapes, ``pk.load`` rebuilds them from the manifest. The feed-forward chunks, the reversible
residual stream and the axial position embeddings hold no heads and are left as they are.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .heads import HeadAdapter, Heads, _linear_slots, hf_example, keep_indices, register

#: the original indices of the heads an LSH layer kept (recorded in the shape manifest)
ATTR = "rotation_heads"


class _Rotating:
    """Mixed into LSH self-attention: hashes its kept heads with their original rotations."""

    def _hash_vectors(
        self,
        vectors: torch.Tensor,
        num_hashes: int,
        attention_mask: torch.Tensor | None,
        increase_num_buckets: bool = False,
    ) -> torch.Tensor:
        """The original's buckets of the kept heads: the vectors ``[B, h, ...]`` are placed at
        their heads' original indices among ``config.num_attention_heads`` (the removed heads
        zero, as in the masked model), hashed by the original code (which draws every head's
        rotations), and the kept heads' buckets returned."""
        total = self.config.num_attention_heads  # the original count: pruning keeps it there
        index = torch.tensor(getattr(self, ATTR), device=vectors.device)
        full = vectors.new_zeros(vectors.shape[0], total, *vectors.shape[2:])
        full[:, index] = vectors.detach()  # the original detaches them too
        heads, self.num_attention_heads = self.num_attention_heads, total  # read by the original
        try:
            buckets = super()._hash_vectors(full, num_hashes, attention_mask, increase_num_buckets)
        finally:
            self.num_attention_heads = heads
        return buckets[:, index]


@functools.cache
def _rotating_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` (LSH self-attention, same parameters and ``state_dict`` keys) with
    :class:`_Rotating`'s hashing."""
    return type(f"HeadPruned{cls.__name__}", (_Rotating, cls), {})


_REFORMER = {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4,
             "attention_head_size": 8, "attn_layers": ["local", "lsh"], "axial_pos_shape": (4, 4),
             "axial_pos_embds_dim": (16, 16), "max_position_embeddings": 16,
             "feed_forward_size": 64, "local_attn_chunk_length": 4, "lsh_attn_chunk_length": 4,
             "num_buckets": 2, "is_decoder": True}  # fmt: skip


@register(
    "reformer",
    "ReformerAttention",
    examples=(hf_example("ReformerModelWithLMHead", **_REFORMER),),
)
class ReformerAttention(HeadAdapter):
    """Reformer: ``self_attention``'s ``query``/``key``/``value`` (local) or ``query_key``/
    ``value`` (LSH) rows and ``output.dense`` columns; the counts live in ``self_attention``."""

    holder = "self_attention"
    o = "output.dense"
    #: the config's head count stays the original: LSH draws its rotations for it
    writes_config = False

    def matches(self, module: nn.Module) -> bool:
        attn = getattr(module, self.holder, None)
        return isinstance(getattr(attn, "value", None), nn.Linear) and isinstance(
            getattr(getattr(module, "output", None), "dense", None), nn.Linear
        )

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        d = self.head_dim(module)
        h = module.self_attention.value.out_features // d
        heads = Heads(h, h, d)
        shared = hasattr(module.self_attention, "query_key")  # LSH: queries are the keys
        q, kv = ("query_key", ("value",)) if shared else ("query", ("key", "value"))
        heads.q = _linear_slots(prefix, module, f"{self.holder}.{q}", True)
        heads.q += _linear_slots(prefix, module, self.o, False)
        for path in kv:
            heads.kv += _linear_slots(prefix, module, f"{self.holder}.{path}", True)
        return heads

    def resize(self, module: nn.Module) -> None:
        attn = module.self_attention
        attn.num_attention_heads = attn.value.out_features // attn.attention_head_size
        attn.all_head_size = attn.value.out_features

    def drop(self, module: nn.Module, heads: list[int]) -> None:
        attn = module.self_attention
        if hasattr(attn, "query_key"):  # LSH: its rotations follow the original heads
            keep_indices(attn, ATTR, attn.num_attention_heads, heads)

    def reattach(self, module: nn.Module) -> None:
        attn = module.self_attention
        if getattr(attn, ATTR, None) is not None and not isinstance(attn, _Rotating):
            attn.__class__ = _rotating_class(type(attn))
