"""Attention heads: one adapter per attention module type knows where its heads live.

An adapter maps a module to :class:`Heads`: the slices that hold each query head (q rows, o
columns, per-head tables) and each key/value head (k, v rows), plus the head counts. From that
layout :func:`head_groups` builds ordinary :class:`~.groups.Group` objects, so heads are scored,
masked and shrunk exactly like channel groups:

* with one query head per KV head (plain multi-head attention) a unit is one head;
* with GQA a unit is one query head, and the query heads of every KV group of a layer are tied so
  each group loses the same number (``Head(kv_groups=True)`` prunes whole KV groups instead).

After slicing, the adapter's :meth:`HeadAdapter.resize` updates the module's head counts so its
own forward runs unchanged. Adapters register in :data:`HEAD_ADAPTERS` with the attention class
names they serve (matched along the MRO); modules with ``q_proj``/``k_proj``/``v_proj``/``o_proj``
and a ``head_dim`` match the generic adapter. Each adapter's examples are tiny models whose 50%
head pruning it serves (run by the contract tests).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TargetError
from ..registry import Registry
from .attention import (
    CHUNK_ATTRS,
    Q_ATTRS,
    StructuralAdapter,
    Unproven,
    find_heads,
    nested,
    remember_heads,
)
from .attention_pattern import eager_attention
from .graph import Graph
from .groups import Group, Slot
from .propagate import Example

HEAD_ADAPTERS: Registry[HeadAdapter] = Registry("head adapter")
#: attention class name -> its adapter
_BY_CLASS: dict[str, HeadAdapter] = {}


@dataclass
class Heads:
    """Where the heads of one attention module live. Offsets address fused projections."""

    hq: int
    hkv: int
    d: int
    #: (slot, offset): index space [hq * d] starting at offset (q rows, o columns)
    q: list[tuple[Slot, int]] = field(default_factory=list)
    #: (slot, offset): index space [hkv * d] (k and v rows)
    kv: list[tuple[Slot, int]] = field(default_factory=list)
    #: index space [hq]: one entry per query head (relative position bias tables)
    per_head: list[Slot] = field(default_factory=list)
    #: (slot, index [hq, k]) and (slot, index [hkv, k]): slices of each head, found by structure
    q_index: list[tuple[Slot, torch.Tensor]] = field(default_factory=list)
    kv_index: list[tuple[Slot, torch.Tensor]] = field(default_factory=list)
    #: the projections are cut into this many equal blocks of consecutive heads, by a count the
    #: code reads once (CodeGen's ``mp_num``) or by grouped convolutions (SqueezeBERT's q/k/v
    #: groups, :mod:`.squeezebert`): every block must lose the same number
    chunks: int = 1

    @property
    def rep(self) -> int:
        return self.hq // self.hkv


def _slot(prefix: str, module: nn.Module, path: str, attr: str, dim: int) -> Slot | None:
    sub = _get(module, path)
    if sub is None or getattr(sub, attr, None) is None:
        return None
    name = ".".join(p for p in (prefix, path, attr) if p)
    return Slot(name, sub, attr, dim)


def _linear_slots(prefix: str, module: nn.Module, path: str, out: bool) -> list[tuple[Slot, int]]:
    """Output (rows + bias) or input (columns) slots of the Linear at ``path``."""
    if out:
        slots = [_slot(prefix, module, path, "weight", 0), _slot(prefix, module, path, "bias", 0)]
    else:
        slots = [_slot(prefix, module, path, "weight", 1)]
    return [(s, 0) for s in slots if s is not None]


class HeadAdapter:
    """Knows one attention layout. Subclasses set the projection paths and count attributes."""

    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    #: attributes of the module holding each count, updated by resize()
    q_attrs: tuple[str, ...] = ("num_heads", "num_attention_heads", "n_heads", "num_attn_heads")
    kv_attrs: tuple[str, ...] = ("num_key_value_heads",)
    width_attrs: tuple[str, ...] = ("all_head_size", "inner_dim")
    head_dim_attrs: tuple[str, ...] = (
        "head_dim",
        "attention_head_size",
        "key_value_proj_dim",
        "head_size",
    )
    per_head: tuple[tuple[str, str, int], ...] = ()
    #: module (relative to the adapter's module) that holds the count attributes
    holder: str = ""
    #: the head counts may be written into a Hugging Face config (False where the config cannot
    #: describe them: rebuilding from it would give other heads)
    writes_config: bool = True
    #: structure finds the heads (:mod:`.attention`); the adapter adds only what structure
    #: cannot tell: its :meth:`resize` runs after the structural one, :meth:`reattach` on load
    structural: bool = False

    def matches(self, module: nn.Module) -> bool:
        return all(isinstance(_get(module, p), nn.Linear) for p in (self.q, self.k, self.v, self.o))

    def head_dim(self, module: nn.Module) -> int:
        holder = _get(module, self.holder)
        for a in self.head_dim_attrs:
            d = getattr(holder, a, None)
            if isinstance(d, int) and d > 0:
                return d
        raise AttributeError(f"{type(module).__name__} has no head dimension attribute")

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        d = self.head_dim(module)
        hq = _get(module, self.q).weight.shape[0] // d
        hkv = _get(module, self.k).weight.shape[0] // d
        heads = Heads(hq, hkv, d)
        heads.q = _linear_slots(prefix, module, self.q, True) + _linear_slots(
            prefix, module, self.o, False
        )
        heads.kv = _linear_slots(prefix, module, self.k, True) + _linear_slots(
            prefix, module, self.v, True
        )
        for path, attr, dim in self.per_head:
            s = _slot(prefix, module, path, attr, dim)
            if s is not None:
                heads.per_head.append(s)
        return heads

    def counts(self, module: nn.Module) -> tuple[int, int, int]:
        """(query heads, KV heads, head size) as the module's weights now hold them."""
        heads = self.layout("", module)
        return heads.hq, heads.hkv, heads.d

    def couple(self, prefix: str, module: nn.Module) -> str | None:
        """Modules returning the same key must keep the same heads (shared position bias)."""
        return None

    def resize(self, module: nn.Module) -> None:
        holder = _get(module, self.holder)
        d = self.head_dim(module)
        hq = _get(module, self.q).weight.shape[0] // d
        hkv = _get(module, self.k).weight.shape[0] // d
        _set_existing(holder, self.q_attrs, hq)
        _set_existing(holder, self.kv_attrs, hkv)
        _set_existing(holder, self.width_attrs, hq * d)
        if hasattr(holder, "num_key_value_groups"):
            holder.num_key_value_groups = hq // hkv

    def unsupported(self, module: nn.Module) -> str | None:
        """Why this module's heads cannot be pruned (None: they can)."""
        return None

    def drop(self, module: nn.Module, heads: list[int]) -> None:
        """Called before :meth:`resize` with the query heads (indices before slicing) that
        shrinking removes, for adapters that remember which heads remain."""

    def before_trace(self, module: nn.Module) -> None:
        """For a :attr:`structural` adapter: drop state that would hide the module's structure
        from the trace that finds its heads (a cache of tensors computed by an earlier forward)."""

    def reattach(self, module: nn.Module) -> None:
        """Set up what size attributes cannot hold (a module class, a hook, a config copy), from
        the module's shapes: after :meth:`resize` at shrink time, and on a module that a
        checkpoint's shape manifest has just resized (see :func:`reattach`). Runs again on a
        module it set up already: it must change nothing then."""


@functools.cache
def pruned_class(cls: type[nn.Module], forward: Callable[..., Any]) -> type[nn.Module]:
    """``cls`` with ``forward`` in place of its own (same parameters, ``state_dict`` keys and
    constructor): for attention whose own forward cannot run with fewer heads."""
    return type(f"HeadPruned{cls.__name__}", (cls,), {"forward": forward})


def keep_indices(holder: nn.Module, attr: str, count: int, dropped: list[int]) -> None:
    """Record in ``holder.<attr>`` the original indices of the heads that remain once the
    current heads ``dropped`` go (``count``: the heads before any went); the shape manifest
    carries it (``MANIFEST_INDEX_ATTRS``), for adapters whose forward follows each head's origin."""
    if not dropped:
        return
    kept, gone = getattr(holder, attr, range(count)), set(dropped)
    setattr(holder, attr, [k for i, k in enumerate(kept) if i not in gone])


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path) if path else module
    except AttributeError:
        return None


def _set_existing(obj: object, attrs: tuple[str, ...], value: int) -> None:
    for a in attrs:
        if isinstance(getattr(obj, a, None), int):
            setattr(obj, a, value)


def register(name: str, *class_names: str, examples: tuple[Example, ...]):
    """Register the adapter class as ``name``, serving attention classes ``class_names``."""

    def add(cls: type[HeadAdapter]) -> type[HeadAdapter]:
        adapter = cls()
        for n in class_names:
            if n in _BY_CLASS:
                raise RuntimeError(f"attention class {n!r} has two head adapters")
        HEAD_ADAPTERS.register(name, examples=examples)(adapter)
        for n in class_names:
            _BY_CLASS[n] = adapter
        return cls

    return add


def hf_example(model: str, inputs: str = "tokens", **cfg: object) -> Example:
    """An example built from ``transformers.<model>(<its config>(**cfg))`` (random weights)."""

    def build() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        cls = getattr(transformers, model)
        return cls(cls.config_class(**cfg)).eval()

    def make_inputs() -> object:
        g = torch.Generator().manual_seed(0)
        if inputs == "image":
            return torch.randn(2, 3, 32, 32, generator=g)
        return {"input_ids": torch.randint(0, 64, (2, 8), generator=g)}

    return Example(build, make_inputs)


_TEXT = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
_LLAMA = {**_TEXT, "intermediate_size": 64, "num_key_value_heads": 2}


@register(
    "proj",
    "LlamaAttention",
    "MistralAttention",
    "Qwen2Attention",
    "ViTAttention",
    examples=(hf_example("LlamaForCausalLM", **_LLAMA),),
)
class ProjAttention(HeadAdapter):
    """``q_proj``/``k_proj``/``v_proj``/``o_proj`` and ``head_dim`` (Llama, Mistral, Qwen2, ViT)."""


@register(
    "out-proj",
    "OPTAttention",
    "BartAttention",
    "WhisperAttention",
    "GPTNeoSelfAttention",
    examples=(
        hf_example("OPTForCausalLM", **_TEXT, ffn_dim=64, word_embed_proj_dim=32),
        hf_example(  # eager attention (no sdpa call for structure to read)
            "GPTNeoForCausalLM", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
            attention_types=[[["global", "local"], 1]], max_position_embeddings=16,
        ),
    ),
)  # fmt: skip
class OutProjAttention(HeadAdapter):
    o = "out_proj"


_SWIN = {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1], "num_heads": [4],
         "window_size": 4}  # fmt: skip


@register("swin", "SwinAttention", examples=(hf_example("SwinModel", "image", **_SWIN),))
class SwinAttention(HeadAdapter):
    per_head = (("relative_position_bias", "relative_position_bias_table", 1),)


@register(
    "bert",
    "BertAttention",
    "RobertaAttention",
    examples=(hf_example("BertModel", **_TEXT, intermediate_size=64),),
)
class BertAttention(HeadAdapter):
    q, k, v, o = "self.query", "self.key", "self.value", "output.dense"
    holder = "self"


@register(
    "bigbird-pegasus",
    "BigBirdPegasusEncoderAttention",
    examples=(
        hf_example(
            "BigBirdPegasusModel", vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
            decoder_ffn_dim=64, attention_type="original_full",
        ),
    ),
)  # fmt: skip
class BigBirdPegasusEncoderAttention(BertAttention):
    """BigBird-Pegasus's encoder: BERT's self-attention, its output projection named ``output``."""

    o = "output"


@register(
    "deberta-v2",
    "DebertaV2Attention",
    "SEWDAttention",
    examples=(
        hf_example(
            "DebertaV2Model", **_TEXT, intermediate_size=64, relative_attention=True,
            pos_att_type=["p2c", "c2p"], max_relative_positions=8, position_buckets=4,
        ),
    ),
)  # fmt: skip
class DebertaV2Attention(BertAttention):
    """DeBERTa-v2/v3 disentangled attention: besides q/k/v, the projections of the relative
    position embeddings (``pos_query_proj``/``pos_key_proj``, absent with ``share_att_key``)
    have one block of rows per head."""

    q, k, v = "self.query_proj", "self.key_proj", "self.value_proj"

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        heads = super().layout(prefix, module)
        for path in ("self.pos_query_proj", "self.pos_key_proj"):
            heads.q += _linear_slots(prefix, module, path, True)
        return heads


@register("swinv2", "Swinv2Attention", examples=(hf_example("Swinv2Model", "image", **_SWIN),))
class Swinv2Attention(BertAttention):
    """Swin V2: cosine attention scaled by a per-head ``logit_scale`` ``[H, 1, 1]``, plus a
    position bias whose MLP's last layer has one output row per head."""

    per_head = (
        ("self", "logit_scale", 0),
        ("self.continuous_position_bias_mlp.2", "weight", 0),
        ("self.continuous_position_bias_mlp.2", "bias", 0),
    )


@register(
    "mobilevit",
    "MobileViTAttention",
    examples=(
        hf_example(
            "MobileViTModel", "image", image_size=32, hidden_sizes=[16, 16, 16],
            neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16], num_attention_heads=4,
        ),
    ),
)  # fmt: skip
class MobileViTAttention(HeadAdapter):
    q, k, v, o = "attention.query", "attention.key", "attention.value", "output.dense"
    holder = "attention"


@register(
    "distilbert",
    "DistilBertSelfAttention",
    "MultiHeadSelfAttention",
    examples=(
        hf_example("DistilBertModel", vocab_size=64, dim=32, n_layers=1, n_heads=4, hidden_dim=64),
    ),
)
class DistilBertAttention(HeadAdapter):
    """DistilBERT."""

    q, k, v, o = "q_lin", "k_lin", "v_lin", "out_lin"


@register(
    "t5",
    "T5Attention",
    "MT5Attention",
    "LongT5Attention",
    "LongT5LocalAttention",
    "LongT5TransientGlobalAttention",
    examples=(
        hf_example(
            "T5EncoderModel", vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2,
            num_heads=4, relative_attention_num_buckets=8,
        ),
    ),
)  # fmt: skip
class T5Attention(HeadAdapter):
    """T5: the relative position bias of layer 0 is reused by every layer of its stack, so all
    layers of a stack keep the same heads (self- and cross-attention separately)."""

    q, k, v, o = "q", "k", "v", "o"
    per_head = (
        ("relative_attention_bias", "weight", 1),
        ("global_relative_attention_bias", "weight", 1),  # LongT5's transient-global attention
    )

    def counts(self, module: nn.Module) -> tuple[int, int, int]:
        """(query heads, KV heads, head size) as the module's weights now hold them."""
        heads = self.layout("", module)
        return heads.hq, heads.hkv, heads.d

    def couple(self, prefix: str, module: nn.Module) -> str | None:
        return f"{prefix.split('.block.')[0]}:{prefix.rsplit('.', 1)[-1]}"


@register(
    "mpnet",
    "MPNetEncoder",
    examples=(hf_example("MPNetModel", **_TEXT, intermediate_size=64),),
)
class MPNetEncoder(HeadAdapter):
    """MPNet: the encoder computes one relative position bias ``[B, H, T, T]`` (its
    ``relative_attention_bias`` has a column per head) and adds it in every layer, so every layer
    keeps the same heads: the adapter serves the encoder, and one unit is head ``h`` of every
    layer plus its bias column."""

    def matches(self, module: nn.Module) -> bool:
        layers = getattr(module, "layer", None)
        return isinstance(getattr(module, "relative_attention_bias", None), nn.Embedding) and (
            isinstance(layers, nn.ModuleList)
            and all(isinstance(_get(m, "attention.attn"), nn.Module) for m in layers)
        )

    def _attns(self, module: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"layer.{i}.attention.attn", m.attention.attn) for i, m in enumerate(module.layer)]

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        first = module.layer[0].attention.attn
        d = first.attention_head_size
        heads = Heads(first.q.weight.shape[0] // d, first.k.weight.shape[0] // d, d)
        for path, _ in self._attns(module):
            heads.q += _linear_slots(prefix, module, f"{path}.q", True)
            heads.q += _linear_slots(prefix, module, f"{path}.o", False)
            heads.kv += _linear_slots(prefix, module, f"{path}.k", True)
            heads.kv += _linear_slots(prefix, module, f"{path}.v", True)
        heads.per_head.append(_slot(prefix, module, "relative_attention_bias", "weight", 1))
        return heads

    def counts(self, module: nn.Module) -> tuple[int, int, int]:
        attn = module.layer[0].attention.attn
        return attn.num_attention_heads, attn.num_attention_heads, attn.attention_head_size

    def resize(self, module: nn.Module) -> None:
        for _, attn in self._attns(module):
            h = attn.q.weight.shape[0] // attn.attention_head_size
            attn.num_attention_heads, attn.all_head_size = h, h * attn.attention_head_size
        module.n_heads = module.relative_attention_bias.weight.shape[1]
        module.relative_attention_bias.embedding_dim = module.n_heads


@register(
    "phi3", "Phi3Attention", examples=(hf_example("Phi3ForCausalLM", **_LLAMA, pad_token_id=0),)
)
class Phi3Attention(HeadAdapter):
    """Phi-3: one fused ``qkv_proj`` holds q, k and v rows; it finds the split from
    ``config.num_attention_heads``, so only uniform head counts (written to the config) work."""

    def matches(self, module: nn.Module) -> bool:
        return isinstance(getattr(module, "qkv_proj", None), nn.Linear) and hasattr(
            module, "o_proj"
        )

    def _counts(self, module: nn.Module) -> tuple[int, int, int]:
        d = module.head_dim
        hkv = module.num_key_value_heads
        hq = module.qkv_proj.weight.shape[0] // d - 2 * hkv
        return hq, hkv, d

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        hq, hkv, d = self._counts(module)
        heads = Heads(hq, hkv, d)
        w = _slot(prefix, module, "qkv_proj", "weight", 0)
        heads.q = [(w, 0), (_slot(prefix, module, "o_proj", "weight", 1), 0)]
        heads.kv = [(w, hq * d), (w, (hq + hkv) * d)]
        return heads

    def resize(self, module: nn.Module) -> None:
        d = module.head_dim
        hq = module.o_proj.weight.shape[1] // d
        hkv = (module.qkv_proj.weight.shape[0] // d - hq) // 2
        module.num_key_value_heads = hkv
        module.num_key_value_groups = hq // hkv
        module.config.num_attention_heads = hq  # read by forward to split qkv
        module.config.num_key_value_heads = hkv


@register(
    "gpt2",
    "GPT2Attention",
    examples=(hf_example("GPT2Model", vocab_size=64, n_embd=32, n_layer=1, n_head=4),),
)
class GPT2Attention(HeadAdapter):
    """GPT-2: one fused ``c_attn`` Conv1D ``[in, 3E]`` holds q, k and v side by side."""

    def matches(self, module: nn.Module) -> bool:
        return (
            hasattr(module, "c_attn")
            and hasattr(module, "c_proj")
            and not getattr(module, "is_cross_attention", False)
        )

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        d = self.head_dim(module)
        e = module.c_attn.weight.shape[1] // 3
        h = e // d
        heads = Heads(h, h, d)
        w = _slot(prefix, module, "c_attn", "weight", 1)
        b = _slot(prefix, module, "c_attn", "bias", 0)
        heads.q = [(w, 0), (b, 0), (_slot(prefix, module, "c_proj", "weight", 0), 0)]
        heads.kv = [(w, e), (b, e), (w, 2 * e), (b, 2 * e)]
        return heads

    def resize(self, module: nn.Module) -> None:
        e = module.c_attn.weight.shape[1] // 3
        module.split_size = e
        module.num_heads = e // module.head_dim
        module.embed_dim = e


#: adapters that serve, by their naming alone, attention classes registered nowhere (q/k/v/o
#: projections, BERT's self.query/.../output.dense) where the module holds a head size
GENERIC = ("proj", "out-proj", "bert")


def adapter_for(module: nn.Module) -> HeadAdapter | None:
    for cls in type(module).__mro__:
        found = _BY_CLASS.get(cls.__name__)
        if found is not None:
            return found if found.matches(module) else None
    for name in GENERIC:
        generic = HEAD_ADAPTERS.get(name)
        if generic.matches(module):
            try:
                generic.head_dim(module)
            except AttributeError:
                continue
            return generic
    return None


def _rows(offset: int, heads: list[int], width: int) -> list[int]:
    return [offset + h * width + j for h in heads for j in range(width)]


def _group(name: str, heads: Heads, units: list[list[int]], kv: list[int] | None) -> Group:
    """A group whose unit ``u`` holds query heads ``units[u]`` (and KV head ``kv[u]``)."""
    slots, index = [], []
    for slot, off in heads.q:
        slots.append(slot)
        index.append(torch.tensor([_rows(off, hs, heads.d) for hs in units]))
    for slot in heads.per_head:
        slots.append(slot)
        index.append(torch.tensor(units))
    for slot, idx in heads.q_index:
        slots.append(slot)
        index.append(idx[torch.tensor(units)].reshape(len(units), -1))  # [units, heads * k]
    if kv is not None:
        for slot, off in heads.kv:
            slots.append(slot)
            index.append(torch.tensor([_rows(off, [g], heads.d) for g in kv]))
        for slot, idx in heads.kv_index:
            slots.append(slot)
            index.append(idx[torch.tensor(kv)])
    g = Group(name, "head", slots, index)
    g.info["heads"] = units
    return g


def head_groups(
    model: nn.Module,
    kv_groups: bool | None = None,
    example_inputs: Any = None,
    refuse: bool = False,
) -> list[Group]:
    """Head groups of every attention module with an adapter, and (given ``example_inputs``)
    of every other attention that structure can tell (:mod:`.attention`).

    ``kv_groups=None`` (as ``pk.shrink`` uses) returns both kinds: whole KV groups, and tied query
    heads within KV groups where there is GQA. ``True``/``False`` picks one kind, as pruning does.
    An attention module whose adapter cannot prune it is skipped, or with ``refuse`` raises
    :class:`~prunekit.errors.TargetError` naming it and why.
    """
    layouts: list[tuple[str, nn.Module, HeadAdapter | StructuralAdapter, Heads]] = []
    generic: list[tuple[str, nn.Module, HeadAdapter]] = []
    known_skip: list[str] = []  # refused by their adapter: structure must not take them either
    extras: dict[int, HeadAdapter] = {}  # id(module) -> adapter adding to structure's layout
    served: list[str] = []  # class adapters serve these: structure need not look at them
    for name, module in model.named_modules():
        adapter = adapter_for(module)
        if _serves(adapter, module):
            served.append(name)
        why = adapter.unsupported(module) if adapter is not None else None
        if why is not None:
            if refuse:
                raise TargetError(
                    f"cannot prune the heads of {name} ({type(module).__name__}): {why}"
                )
            known_skip.append(name)
            continue
        if adapter is not None and adapter.structural:
            extras[id(module)] = adapter
        elif adapter is not None and _by_class(module):
            layouts.append((name, module, adapter, adapter.layout(name, module)))
        elif adapter is not None:
            generic.append((name, module, adapter))
    known = [n for n, *_ in layouts] + known_skip
    unproven: list[Unproven] = []
    for module in model.modules():
        if id(module) in extras:
            extras[id(module)].before_trace(module)
    found_all = [] if example_inputs is None else find_heads(model, example_inputs, served)
    for found in found_all:
        if any(nested(found.module, n) for n in known):
            continue
        if isinstance(found, Unproven):
            unproven.append(found)
            continue
        module = _count_holder(model, found.module)
        heads = Heads(found.hq, found.hkv, found.d, q_index=found.q, kv_index=found.kv)
        heads.chunks = next(
            (v for a in CHUNK_ATTRS if isinstance(v := getattr(module, a, None), int)), 1
        )
        structural = StructuralAdapter(found)
        structural.extra = extras.get(id(module))
        layouts.append((found.module, module, structural, heads))
    known = [n for n, *_ in layouts] + known_skip
    for name, module, adapter in generic:  # the q/k/v/o naming fallback, where structure failed
        if not any(nested(name, n) for n in known):
            layouts.append((name, module, adapter, adapter.layout(name, module)))
    known = [n for n, *_ in layouts]
    for u in unproven:  # attention that structure found but cannot prove, and nothing else serves
        if refuse and not any(nested(u.module, n) for n in known):
            cls = type(model.get_submodule(u.module)).__name__
            raise TargetError(f"cannot prune the heads of {u.module or '<root>'} ({cls}): {u.why}")
    groups: list[Group] = []
    coupled: dict[str, list[Group]] = {}
    for name, module, adapter, heads in layouts:
        if heads.hkv < 1 or heads.hq % heads.hkv:
            continue
        rep = heads.rep
        if rep == 1 and heads.chunks > 1 and heads.hq % heads.chunks == 0:
            per = heads.hq // heads.chunks  # tied blocks: each keeps as many heads
            for c in range(heads.chunks):
                hs = list(range(c * per, (c + 1) * per))
                g = _group(f"{name}.heads[chunk{c}]", heads, [[h] for h in hs], hs)
                g.tie = name
                g.info.update(adapter=adapter, module=module)
                groups.append(g)
            continue
        if kv_groups is not False or rep == 1:
            g = _group(
                f"{name}.heads",
                heads,
                [list(range(k * rep, (k + 1) * rep)) for k in range(heads.hkv)],
                list(range(heads.hkv)),
            )
            g.info.update(adapter=adapter, module=module)
            key = adapter.couple(name, module) if isinstance(adapter, HeadAdapter) else None
            if key is None:
                groups.append(g)
            else:
                coupled.setdefault(key, []).append(g)
        if rep > 1 and kv_groups is not True:
            for k in range(heads.hkv):
                g = _group(f"{name}.heads[kv{k}]", heads, [[k * rep + r] for r in range(rep)], None)
                g.tie = name
                g.info.update(adapter=adapter, module=module)
                groups.append(g)
    for key, members in coupled.items():
        if len({m.units for m in members}) != 1:
            continue
        first = members[0]
        merged = Group(
            key,
            "head",
            [s for m in members for s in m.slots],
            [i for m in members for i in m.index],
        )
        merged.info.update(
            adapter=first.info["adapter"],
            modules=[m.info["module"] for m in members],
            heads=first.info["heads"],
        )
        groups.append(merged)
    return groups


def _count_holder(model: nn.Module, name: str) -> nn.Module:
    """The module that holds the head count of the attention issued by module ``name``: itself,
    or where it holds none (a wrapper around the product: SqueezeBERT's ``MatMulWrapper``) its
    nearest ancestor that does."""
    path = name.split(".") if name else []
    for i in range(len(path), -1, -1):
        module = model.get_submodule(".".join(path[:i]))
        if any(isinstance(getattr(module, a, None), int) for a in Q_ATTRS):
            return module
    return model.get_submodule(name)


def _by_class(module: nn.Module) -> bool:
    """An adapter is registered for the module's class (not the generic naming fallback)."""
    return any(c.__name__ in _BY_CLASS for c in type(module).__mro__)


def _serves(adapter: HeadAdapter | None, module: nn.Module) -> bool:
    """``adapter`` is ``module``'s class adapter and takes its heads from it, not structure."""
    return adapter is not None and not adapter.structural and _by_class(module)


def served_by_class(model: nn.Module) -> list[str]:
    """Names of the modules whose heads :func:`head_groups` takes from their class's adapter:
    it sets aside what structure finds in or around them, so structure need not look."""
    return [n for n, m in model.named_modules() if _serves(adapter_for(m), m)]


def remember_channel_trace(model: nn.Module, example_inputs: Any, graph: Graph) -> None:
    """Keep the head layouts of a trace made for channels (one trace serves both), where the
    trace holds an attention call. Not where an adapter must prepare a module before the trace
    that reads its heads (LeViT's bias cache)."""
    if any(getattr(adapter_for(m), "structural", False) for m in model.modules()):
        return
    if any(call.name == "scaled_dot_product_attention" for call in graph.calls) or (
        eager_attention(graph)
    ):
        remember_heads(model, example_inputs, graph, served_by_class(model))


def resize_heads(groups: list[Group]) -> list[tuple[int, int, int]]:
    """Update the head counts of every module the groups cover (after slicing); returns the
    (query heads, KV heads, head size) of each whose adapter lets a config hold them."""
    dropped: dict[int, list[int]] = {}
    for g in groups:  # the query heads each module loses (coupled modules lose the same)
        dead = g.info.get("dead")
        if dead is not None and "heads" in g.info:
            heads = [h for u in torch.nonzero(dead).flatten().tolist() for h in g.info["heads"][u]]
            for module in g.info.get("modules", [g.info.get("module")]):
                dropped.setdefault(id(module), []).extend(heads)
    done: set[int] = set()
    counts = []
    for g in groups:
        adapter = g.info.get("adapter")
        for module in g.info.get("modules", [g.info.get("module")]):
            if adapter is not None and module is not None and id(module) not in done:
                done.add(id(module))
                if isinstance(adapter, HeadAdapter):
                    adapter.drop(module, sorted(set(dropped.get(id(module), []))))
                adapter.resize(module)
                adapter.reattach(module)
                if getattr(adapter, "writes_config", True):
                    counts.append(adapter.counts(module))
    return counts


def reattach(model: nn.Module) -> None:
    """Let every attention module's adapter restore, after a checkpoint's shapes were applied to
    a freshly built ``model``, what size attributes cannot hold (``pk.load`` calls this)."""
    for module in model.modules():
        adapter = adapter_for(module)
        if adapter is not None:
            adapter.reattach(module)
