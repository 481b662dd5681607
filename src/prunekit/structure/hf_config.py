"""Keep a Hugging Face config true to a shrunk model, where one value can describe every layer.

Widths that differ from layer to layer (``scope="global"``) cannot be written into a config; they
live in the shape manifest (:mod:`prunekit.formats.manifest`). Uniform values are written: MLP
widths, the hidden (residual) width, head counts, and the head size where the config has a
field for it (so a model rebuilt from the config keeps it), and the norms' epsilon where one
value holds for all. :func:`~prunekit.formats.config_fit.describes` says whether the patched
config rebuilds exactly the shrunk shapes and epsilons (then ``from_pretrained`` loads the model
and computes the same).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn

from ..formats.config_fit import EPS_ATTRS, is_float, meta_build, same_eps, validates
from ..targets import is_hf_conv1d

#: config field -> module-name suffixes whose output width is that field
WIDTH_FIELDS: dict[str, tuple[str, ...]] = {
    "intermediate_size": ("mlp.up_proj", "intermediate.dense", "mlp.fc1", "mlp.dense_h_to_4h"),
    "n_inner": ("mlp.c_fc",),
    "ffn_dim": (".fc1",),
    "d_ff": ("DenseReluDense.wi", "DenseReluDense.wi_0"),
    "hidden_dim": ("ffn.lin1",),
    "ffn_hidden_size": ("mlp.dense_h_to_4h",),
}
#: config fields that hold the residual width (aliases resolve through ``attribute_map``)
HIDDEN_FIELDS = ("hidden_size", "word_embed_proj_dim", "embedding_size")
#: config fields of an input embedding width that may differ from the hidden width
EMBED_FIELDS = ("embedding_size", "input_embedding_size")
#: config fields that norms take their epsilon from
EPS_FIELDS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")
#: module attributes that hold an attention's head size
HEAD_SIZES = ("head_dim", "attention_head_size", "key_value_proj_dim", "head_size")


def _width(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.out_features
    if is_hf_conv1d(m):
        return m.nf
    return None


def _uniform(values: list[int]) -> int | None:
    return values[0] if values and len(set(values)) == 1 else None


def update_config(model: nn.Module, heads: list[tuple[int, int, int]]) -> None:
    """Write uniform widths and head counts of ``model`` into ``model.config`` (if any);
    ``heads`` lists (query heads, KV heads, head size) per attention module."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return
    before = {f: getattr(config, f, None) for f in (*WIDTH_FIELDS, *HIDDEN_FIELDS)}
    for fld, suffixes in WIDTH_FIELDS.items():
        if getattr(config, fld, None) is None:
            continue
        value = _uniform(
            [
                w
                for n, m in model.named_modules()
                if n.endswith(suffixes) and (w := _width(m)) is not None
            ]
        )
        if value is not None:
            setattr(config, fld, value)
    try:
        width = getattr(model.get_input_embeddings(), "embedding_dim", None)
    except (AttributeError, NotImplementedError):  # a model without input embeddings
        width = None
    old = getattr(config, "hidden_size", None)
    # ALBERT, Electra, RemBERT: embeddings of their own width, projected to the hidden width
    own = next((f for f in EMBED_FIELDS if isinstance(getattr(config, f, None), int)), None)
    factored = getattr(config, own) if own is not None else old
    if isinstance(width, int) and factored != old:
        if width != factored:
            setattr(config, own, width)  # the hidden width is not the embeddings'
    elif isinstance(width, int) and isinstance(old, int) and width != old:
        for fld in HIDDEN_FIELDS:
            if getattr(config, fld, None) == old:
                setattr(config, fld, width)
    if not _holds(model, config):
        # the config derives other widths from these (BERT's attention width is its hidden
        # size): a model rebuilt from it would be narrower than the shrunk one, so the widths
        # stay as they were and the shape manifest narrows the rebuilt model
        for fld, value in before.items():
            if value is not None:
                setattr(config, fld, value)
    _sync_module_copies(model, config, before)
    eps = {getattr(m, a) for m in model.modules() for a in EPS_ATTRS if is_float(m, a)}
    for fld in EPS_FIELDS:  # RMS norms fold a width change into eps (shrink.rescale_rms_norms)
        if isinstance(getattr(config, fld, None), float) and len(eps) == 1:
            setattr(config, fld, eps.pop())
    hq = _uniform([h[0] for h in heads])
    hkv = _uniform([h[1] for h in heads])
    d = _uniform([h[2] for h in heads])
    if hq is None or d is None:
        return
    saved = dict(config.__dict__)
    if getattr(config, "head_dim", None) != d:  # models that read config.head_dim take it
        _set(config, "head_dim", d)
    if hasattr(config, "num_attention_heads"):
        _set(config, "num_attention_heads", hq)
    if hasattr(config, "d_kv") and hasattr(config, "num_heads"):  # T5
        _set(config, "num_heads", hq)
    for fld in ("num_key_value_heads", "num_kv_heads"):
        if hkv is not None and getattr(config, fld, None) is not None:
            _set(config, fld, hkv)
    if config.__dict__ != saved and not _rebuilds_heads(model, config):
        # the config derives the head size from the count (BERT, GPT-2, BART: width // heads):
        # a model rebuilt from new counts would have other heads (and scale its scores by them);
        # or it cannot hold the eps of norms over the heads' width (OLMo-2's q/k norms): a model
        # rebuilt from it would load and compute otherwise. So the counts stay (plain
        # transformers refuses the shapes) and the shape manifest holds the heads
        config.__dict__.clear()
        config.__dict__.update(saved)


def _rebuilds_heads(model: nn.Module, config: object) -> bool:
    """A model built from ``config`` (on the meta device) has every attention module's head
    size that ``model`` has, and every norm's epsilon."""
    if not validates(config):  # XLNet: d_head * n_head == d_model
        return False
    fresh = meta_build(model, config)
    if fresh is None:
        return False
    built = dict(fresh.named_modules())
    return all(
        built.get(n) is not None and built[n].__dict__.get(a) == v
        for n, m in model.named_modules()
        for a in HEAD_SIZES
        if isinstance(v := m.__dict__.get(a), int)
    ) and same_eps(model, built)


def _holds(model: nn.Module, config: object) -> bool:
    """A model built from ``config`` (on the meta device) is at least as large as ``model`` in
    every dimension of every parameter and buffer, so a shape manifest can narrow it to
    ``model``; True where the class cannot be rebuilt from a config (nothing to compare), False
    where this config does not build (Reformer's axial position widths must sum to the hidden
    size)."""
    if getattr(type(model), "_from_config", None) is None:
        return True
    if not validates(config):  # Llama: hidden_size a multiple of num_attention_heads
        return False
    fresh = meta_build(model, config)
    if fresh is None:
        return False
    shapes = {k: v.shape for k, v in fresh.state_dict().items()}

    def fits(key: str, t: torch.Tensor) -> bool:
        built = shapes.get(key)
        return built is None or (
            len(built) == t.dim() and all(a >= b for a, b in zip(built, t.shape, strict=True))
        )

    return all(fits(k, v) for k, v in model.state_dict().items())


def mark_hidden_width(model: nn.Module, groups: list[Any]) -> None:
    """Give the residual-stream group of a Hugging Face model (the input embeddings' width) an
    ``info["fits"]`` check, kept count -> bool: whether the config's validators accept it as the
    hidden size (Llama: a multiple of ``num_attention_heads``), so that the shrunk model's
    config.json still loads in plain transformers."""
    config = getattr(model, "config", None)
    old = getattr(config, "hidden_size", None)
    if not hasattr(config, "to_dict") or not isinstance(old, int) or not validates(config):
        return
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return
    seen: dict[int, bool] = {}

    def fits(kept: int) -> bool:
        if kept not in seen:
            narrow = copy.deepcopy(config)
            for fld in HIDDEN_FIELDS:
                if getattr(narrow, fld, None) == old:
                    _set(narrow, fld, kept)
            seen[kept] = validates(narrow)
        return seen[kept]

    for g in groups:
        if g.units == old and any(
            s.module is embeddings and s.attr == "weight" and s.dim == 1 for s in g.slots
        ):
            g.info["fits"] = fits


def _set(config: object, field: str, value: int) -> None:
    """Set a config field; a derived one (a read-only property) and a per-stage list (Swin's
    ``num_heads``, which one count cannot describe) are left as they are."""
    if isinstance(getattr(config, field, None), (list, tuple)):
        return
    with contextlib.suppress(AttributeError):
        setattr(config, field, value)


def _sync_module_copies(model: nn.Module, config: object, before: dict[str, object]) -> None:
    """Modules keep copies of config widths (``LlamaDecoderLayer.hidden_size``,
    ``LlamaMLP.intermediate_size``): where a field changed, update the copies that held its old
    value, so that the model describes itself as its config does."""
    for fld, old in before.items():
        new = getattr(config, fld, None)
        if not isinstance(old, int) or isinstance(old, bool) or new == old:
            continue
        for m in model.modules():
            if m.__dict__.get(fld) == old and type(m.__dict__[fld]) is int:
                setattr(m, fld, new)
