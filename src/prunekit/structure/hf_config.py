"""Keep a Hugging Face config true to a shrunk model, where one value can describe every layer.

Widths that differ from layer to layer (``scope="global"``) cannot be written into a config; they
live in the shape manifest (:mod:`prunekit.formats.manifest`). Head counts are written only where
the config also fixes the head size (``head_dim`` or ``d_kv``), so a model rebuilt from the config
keeps it.
"""

from __future__ import annotations

from torch import nn

from ..targets import is_hf_conv1d

#: config field -> module-name suffixes whose output width is that field
WIDTH_FIELDS: dict[str, tuple[str, ...]] = {
    "intermediate_size": ("mlp.up_proj", "intermediate.dense", "mlp.fc1"),
    "n_inner": ("mlp.c_fc",),
    "ffn_dim": (".fc1",),
    "d_ff": ("DenseReluDense.wi", "DenseReluDense.wi_0"),
}


#: model types whose attention takes ``config.head_dim`` when the config has it
HEAD_DIM_FROM_CONFIG = {"vit", "llama", "mistral", "qwen2"}


def _width(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.out_features
    if is_hf_conv1d(m):
        return m.nf
    return None


def _uniform(values: list[int]) -> int | None:
    return values[0] if values and len(set(values)) == 1 else None


def update_config(model: nn.Module, attention: list[nn.Module]) -> None:
    """Write uniform widths and head counts of ``model`` into ``model.config`` (if any)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return
    for fld, suffixes in WIDTH_FIELDS.items():
        if not hasattr(config, fld):
            continue
        widths = [
            w
            for n, m in model.named_modules()
            if n.endswith(suffixes) and (w := _width(m)) is not None
        ]
        value = _uniform(widths)
        if value is not None:
            setattr(config, fld, value)
    hq = _uniform(
        [
            a.q_proj.out_features // a.head_dim
            for a in attention
            if hasattr(a, "q_proj") and isinstance(getattr(a, "head_dim", None), int)
        ]
    )
    hkv = _uniform(
        [
            a.k_proj.out_features // a.head_dim
            for a in attention
            if hasattr(a, "k_proj") and isinstance(getattr(a, "head_dim", None), int)
        ]
    )
    reads_head_dim = getattr(config, "head_dim", None) or config.model_type in HEAD_DIM_FROM_CONFIG
    if hq is not None and reads_head_dim:
        config.head_dim = next(a.head_dim for a in attention if hasattr(a, "q_proj"))
        config.num_attention_heads = hq
        if hkv is not None and getattr(config, "num_key_value_heads", None) is not None:
            config.num_key_value_heads = hkv
    t5 = _uniform([a.n_heads for a in attention if hasattr(a, "n_heads")])
    if t5 is not None and hasattr(config, "d_kv") and hasattr(config, "num_heads"):
        config.num_heads = t5
