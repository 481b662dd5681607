"""Heads of Bloom's attention: fused per-head ``[q | k | v]`` rows and ALiBi.

``query_key_value`` holds, for each head ``i``, rows ``[3d * i, 3d * (i + 1))``: its query, key and
value (``view(B, T, heads, 3, d)``). The ALiBi bias is built once by ``BloomModel`` from its head
count: head ``i`` gets a slope that depends on ``i`` and on that count. A layer that lost heads
keeps the slopes of the heads it kept: it remembers their original indices (``alibi_heads``,
recorded in the shape manifest), and a forward pre-hook hands it only their rows of the model's
ALiBi tensor. The model's head count (``config.n_head``) stays, so the ALiBi it builds is the
original one. Plain ``transformers`` cannot rebuild such a model (its head size is
``hidden_size // n_head``): ``from_pretrained`` refuses the checkpoint by its shapes, and
``pk.load`` loads it. MPT's attention is treated the same way: its ``Wqkv`` holds q, k and v
blocks one after the other, and its ALiBi ``position_bias`` ``[heads, 1, S]`` comes from
``config.n_heads``. Persimmon has Bloom's per-head rows and no ALiBi.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .heads import HeadAdapter, Heads, _slot, hf_example, keep_indices, register

ATTR = "alibi_heads"


class AlibiOfKeptHeads:
    """Forward pre-hook: pass on the rows of the model's ALiBi that belong to the heads this
    layer kept (``module.alibi_heads``): keyword ``alibi`` ``[B * H0, 1, S]`` (Bloom), or with
    ``per_batch=False`` keyword ``position_bias`` ``[H0, 1, S]`` (MPT)."""

    def __init__(self, kwarg: str = "alibi", per_batch: bool = True) -> None:
        self.kwarg, self.per_batch = kwarg, per_batch

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        alibi = kwargs.get(self.kwarg)
        if alibi is None:
            return None
        kept = torch.tensor(getattr(module, ATTR), device=alibi.device)
        if not self.per_batch:
            return args, {**kwargs, self.kwarg: alibi[kept]}  # [H0, 1, S] -> [h, 1, S]
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is None:
            return None
        rows = alibi.view(hidden.shape[0], -1, *alibi.shape[1:])[:, kept]  # [B, h, 1, S]
        return args, {**kwargs, self.kwarg: rows.reshape(-1, *alibi.shape[1:])}


def _hooked(module: nn.Module) -> bool:
    return any(isinstance(h, AlibiOfKeptHeads) for h in module._forward_pre_hooks.values())


@register(
    "bloom",
    "BloomAttention",
    examples=(
        hf_example("BloomForCausalLM", vocab_size=64, hidden_size=32, n_layer=1, n_head=4),
        hf_example("BloomForCausalLM", vocab_size=64, hidden_size=32, n_layer=2, n_head=8),
    ),
)
class BloomAttention(HeadAdapter):
    """Bloom (``query_key_value`` interleaved per head, ``dense``, ALiBi)."""

    writes_config = False
    #: the module's head count attribute
    count = "num_heads"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(getattr(module, "query_key_value", None), nn.Linear) and isinstance(
            getattr(module, "dense", None), nn.Linear
        )

    def unsupported(self, module: nn.Module) -> str | None:
        if getattr(module, "pretraining_tp", 1) > 1 and getattr(module, "slow_but_exact", False):
            return (
                "with slow_but_exact and pretraining_tp > 1 its forward cuts the output "
                "projection at fixed widths of hidden_size"
            )
        return None

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        d = module.head_dim
        h = module.dense.weight.shape[1] // d
        heads = Heads(h, h, d)
        base = torch.arange(h)[:, None] * 3 * d  # [h, 1]: first row of each head
        q = base + torch.arange(d)  # [h, d]
        kv = base + d + torch.arange(2 * d)  # [h, 2d]: its key and value rows
        w = _slot(prefix, module, "query_key_value", "weight", 0)
        b = _slot(prefix, module, "query_key_value", "bias", 0)
        out = _slot(prefix, module, "dense", "weight", 1)
        fused = [s for s in (w, b) if s is not None]
        heads.q_index = [(s, q) for s in fused] + [(out, torch.arange(h * d).view(h, d))]
        heads.kv_index = [(s, kv) for s in fused]
        return heads

    def counts(self, module: nn.Module) -> tuple[int, int, int]:
        h = getattr(module, self.count)
        return h, h, module.head_dim

    def drop(self, module: nn.Module, heads: list[int]) -> None:
        keep_indices(module, ATTR, getattr(module, self.count), heads)

    def resize(self, module: nn.Module) -> None:
        module.num_heads = module.dense.weight.shape[1] // module.head_dim
        module.split_size = module.num_heads * module.head_dim  # the width of its heads

    def reattach(self, module: nn.Module) -> None:
        if getattr(module, ATTR, None) is not None and not _hooked(module):
            module.register_forward_pre_hook(self.hook(), with_kwargs=True)

    def hook(self) -> AlibiOfKeptHeads:
        return AlibiOfKeptHeads()


@register(
    "mpt",
    "MptAttention",
    examples=(
        hf_example(
            "MptForCausalLM", vocab_size=64, d_model=32, n_heads=4, n_layers=1,
            expansion_ratio=2, max_seq_len=16,
        ),
    ),
)  # fmt: skip
class MptAttention(BloomAttention):
    """MPT: ``Wqkv`` holds q, k and v blocks one after the other, ``out_proj``; ALiBi
    ``position_bias`` ``[n_heads, 1, S]`` built by ``MptModel`` from ``config.n_heads``."""

    count = "n_heads"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(getattr(module, "Wqkv", None), nn.Linear) and isinstance(
            getattr(module, "out_proj", None), nn.Linear
        )

    def unsupported(self, module: nn.Module) -> str | None:
        return None

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        d = module.head_dim
        h = module.out_proj.weight.shape[1] // d
        heads = Heads(h, h, d)
        fused = [_slot(prefix, module, "Wqkv", a, 0) for a in ("weight", "bias")]
        fused = [s for s in fused if s is not None]
        heads.q = [(s, 0) for s in fused] + [(_slot(prefix, module, "out_proj", "weight", 1), 0)]
        heads.kv = [(s, off) for s in fused for off in (h * d, 2 * h * d)]
        return heads

    def resize(self, module: nn.Module) -> None:
        module.n_heads = module.out_proj.weight.shape[1] // module.head_dim

    def hook(self) -> AlibiOfKeptHeads:
        return AlibiOfKeptHeads("position_bias", per_batch=False)


@register(
    "persimmon",
    "PersimmonAttention",
    examples=(
        hf_example(
            "PersimmonForCausalLM", vocab_size=64, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=4, intermediate_size=64,
        ),
    ),
)  # fmt: skip
class PersimmonAttention(BloomAttention):
    """Persimmon: Bloom's per-head ``[q | k | v]`` rows of ``query_key_value``, no ALiBi (its q/k
    layer norms run over one head's size and are shared by all heads: they stay)."""

    writes_config = True

    def unsupported(self, module: nn.Module) -> str | None:
        return None

    def drop(self, module: nn.Module, heads: list[int]) -> None:
        """No per-head bias to follow."""

    def resize(self, module: nn.Module) -> None:
        module.num_heads = module.dense.weight.shape[1] // module.head_dim

    def reattach(self, module: nn.Module) -> None:
        """Nothing beyond the sizes."""
