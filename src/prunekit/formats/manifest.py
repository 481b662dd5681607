"""The shape manifest: what a physically shrunk model looks like, so it can be rebuilt from its
original class without pickle.

:func:`shape_manifest` records, for every module, the shapes of its own parameters and buffers and
the integer size attributes named in :data:`MANIFEST_ATTRS`. :func:`apply_shape_manifest` takes a
freshly built model of the original class and resizes it to match, after which its
``state_dict`` has the shrunk model's keys and shapes.

Modules whose masked forward differs from their forward with zeroed weights (a masked LayerNorm
normalises over its kept channels: :data:`prunekit.masks.MASKED_FORWARD`) also record the
pruned indices of their 1-D masks (``"masks"``), which :func:`apply_shape_manifest` restores.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..masks import MASKED_FORWARD, SUFFIX, mask_names, shrink_mask
from .base import DTYPES, dtype_name

#: size attributes recorded and restored. Add names here for modules that keep sizes elsewhere.
MANIFEST_ATTRS: set[str] = {
    # torch.nn
    "in_features", "out_features", "in_channels", "out_channels", "num_features",
    "normalized_shape", "num_groups", "num_channels", "num_embeddings", "embedding_dim",
    "embed_dim", "kdim", "vdim", "num_heads", "head_dim", "groups", "hidden_size",
    # Hugging Face transformers
    "num_attention_heads", "num_key_value_heads", "num_key_value_groups", "attention_head_size",
    "all_head_size", "intermediate_size", "nf", "nx", "split_size", "inner_dim", "n_heads",
    "n_head", "key_value_proj_dim", "d_model",
}  # fmt: skip

#: float attributes recorded and restored: structured shrinking folds a width change into the
#: epsilon of RMS norms (prunekit.structure.shrink.rescale_rms_norms)
MANIFEST_FLOAT_ATTRS: set[str] = {"variance_epsilon", "eps"}


_ENTRY = {"tensors", "attrs", "dtypes", "masks"}


def _size_value(v: Any) -> int | list[int] | None:
    """``v`` as a JSON size (an int or a list of ints), or None if it is not one."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, (tuple, list)) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in v
    ):
        return list(v)
    return None


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters and buffers, without prunekit's masks."""
    own = dict(module.named_parameters(recurse=False))
    own.update((n, b) for n, b in module.named_buffers(recurse=False) if not n.endswith(SUFFIX))
    return own


def shape_manifest(model: nn.Module) -> dict[str, Any]:
    """The model's sizes, JSON-able: ``{"modules": {name: entry}}``, where an entry holds
    ``"tensors"`` (own parameter and buffer shapes), ``"attrs"`` (size attributes) and ``"dtypes"``
    (of non-persistent buffers, such as rotary tables, which no checkpoint tensor restores: so
    that ``model.half()`` survives a round trip)."""
    modules = {}
    for name, module in model.named_modules():
        own = {n: t for n, t in _tensors(module).items() if t is not None}
        tensors = {n: list(t.shape) for n, t in own.items()}
        dtypes = {
            n: dtype_name(t.dtype)
            for n, t in own.items()
            if n in module._non_persistent_buffers_set and dtype_name(t.dtype) in DTYPES
        }
        attrs = {}
        for a in sorted(MANIFEST_ATTRS):
            v = _size_value(module.__dict__.get(a))
            if v is not None:
                attrs[a] = v
        for a in sorted(MANIFEST_FLOAT_ATTRS):
            v = module.__dict__.get(a)
            if isinstance(v, float) and math.isfinite(v):
                attrs[a] = v
        masks = _forward_masks(module)
        if tensors or attrs or masks:
            modules[name] = {"tensors": tensors, "attrs": attrs, "dtypes": dtypes}
            if masks:
                modules[name]["masks"] = masks
    return {"modules": modules}


def _forward_masks(module: nn.Module) -> dict[str, list[int]]:
    """Pruned indices of the 1-D masks of a module whose masked forward is its own."""
    if not isinstance(module, tuple(MASKED_FORWARD)):
        return {}
    return {
        n: torch.nonzero(~m).flatten().tolist()
        for n, m in mask_names(module)
        if m.dim() == 1 and not bool(m.all())
    }


def _bad(msg: str) -> CheckpointError:
    return CheckpointError(f"shape manifest does not fit this model: {msg}")


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise _bad(f"{where} has a malformed shape {value!r}")
    return tuple(value)


@torch.no_grad()
def apply_shape_manifest(model: nn.Module, manifest: Any) -> nn.Module:
    """Resize a freshly built ``model`` to the recorded shapes and attributes, in place.

    Resized tensors are left uninitialised: load the checkpoint's weights next. Everything is
    checked before the model is touched. A recorded tensor may only shrink (no dimension grows,
    the rank stays), so a tampered manifest cannot make the loader allocate more than the model.
    Non-persistent buffers cannot be restored from weights: they must keep their shape, and take
    the recorded dtype.
    """
    if not isinstance(manifest, dict) or not isinstance(manifest.get("modules"), dict):
        raise _bad("it is not a {'modules': {...}} mapping")
    modules = dict(model.named_modules())
    plan: list[tuple[nn.Module, str, tuple[int, ...]]] = []
    attrs: list[tuple[nn.Module, str, Any]] = []
    casts: list[tuple[nn.Module, str, torch.dtype]] = []
    masks: list[tuple[nn.Module, str, list[int]]] = []
    for name, entry in manifest["modules"].items():
        module = modules.get(name)
        if module is None or not isinstance(entry, dict) or set(entry) - _ENTRY:
            raise _bad(f"module {name!r} is missing from the model or its entry is malformed")
        own = _tensors(module)
        tensors, recorded_attrs = entry.get("tensors", {}), entry.get("attrs", {})
        dtypes = entry.get("dtypes", {})
        if not all(isinstance(x, dict) for x in (tensors, recorded_attrs, dtypes)):
            raise _bad(f"module {name!r} has a malformed entry")
        for pname, pruned in entry.get("masks", {}).items():
            size = tensors.get(pname, [None])[0]
            if (
                not isinstance(module, tuple(MASKED_FORWARD))
                or pname not in module._parameters
                or not isinstance(size, int)
                or not isinstance(pruned, list)
                or not all(isinstance(i, int) and 0 <= i < size for i in pruned)
                or len(set(pruned)) >= size
            ):
                raise _bad(f"module {name!r} has a malformed mask of {pname!r}")
            masks.append((module, pname, pruned))
        for bname, dtype in dtypes.items():
            if bname not in module._non_persistent_buffers_set or own.get(bname) is None:
                raise _bad(f"{name}.{bname} is not a non-persistent buffer")
            if not isinstance(dtype, str) or dtype not in DTYPES:
                raise _bad(f"{name}.{bname} has an unknown dtype {dtype!r}")
            if DTYPES[dtype] != own[bname].dtype:
                casts.append((module, bname, DTYPES[dtype]))
        for pname, shape in tensors.items():
            t = own.get(pname)
            where = f"{name}.{pname}" if name else pname
            if t is None:
                raise _bad(f"{where} is not a tensor of {type(module).__name__}")
            shape = _shape(shape, where)
            if len(shape) != t.dim() or any(a > b for a, b in zip(shape, t.shape, strict=True)):
                raise _bad(f"{where} {tuple(t.shape)} cannot shrink to {shape}")
            persistent = pname not in module._non_persistent_buffers_set
            if shape != tuple(t.shape):
                if not persistent:
                    raise _bad(f"non-persistent buffer {where} would need shape {shape}")
                plan.append((module, pname, shape))
        for attr, value in recorded_attrs.items():
            current = module.__dict__.get(attr)
            if attr in MANIFEST_FLOAT_ATTRS and isinstance(current, float):
                if not isinstance(value, float) or not math.isfinite(value) or value < 0:
                    raise _bad(f"attribute {name}.{attr} cannot be set to {value!r}")
                attrs.append((module, attr, value))
                continue
            new = _size_value(value)
            if attr not in MANIFEST_ATTRS or _size_value(current) is None or new is None:
                raise _bad(f"attribute {name}.{attr} cannot be set to {value!r}")
            if isinstance(new, list) != isinstance(current, (tuple, list)):
                raise _bad(f"attribute {name}.{attr} changes kind ({current!r} -> {value!r})")
            attrs.append((module, attr, tuple(new) if isinstance(current, tuple) else new))
    for module, pname, shape in plan:
        old = getattr(module, pname)
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if pname in module._parameters:
            module._parameters[pname].data = new  # keeps the Parameter, so tied weights stay tied
        else:
            module._buffers[pname] = new
    for module, bname, dtype in casts:
        module._buffers[bname] = module._buffers[bname].to(dtype)
    for module, attr, value in attrs:
        setattr(module, attr, value)
    for module, pname, pruned in masks:
        keep = torch.ones_like(getattr(module, pname), dtype=torch.bool)
        keep[pruned] = False
        shrink_mask(module, pname, keep)
    return model
