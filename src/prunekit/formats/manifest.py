"""The shape manifest: what a physically shrunk model looks like, so it can be rebuilt from its
original class without pickle.

:func:`shape_manifest` records, for every module, the shapes of its own parameters and buffers and
the integer size attributes named in :data:`MANIFEST_ATTRS`. :func:`plan_shape_manifest` checks a
manifest against a freshly built model of the original class without touching it;
:meth:`ManifestPlan.apply` then resizes the model, after which its ``state_dict`` has the shrunk
model's keys and shapes.

A manifest read from disk is untrusted. Besides types and ranges, the plan refuses what a genuine
save never writes: a tensor that grows, a size attribute that no longer describes the tensors it
described in the fresh model (``in_features`` against the weight's columns, a head count against
the width of its projections), a norm epsilon other than the one shrinking derives, or a buffer
dtype of another kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..masks import SUFFIX
from .base import DTYPES, dtype_name

#: size attributes recorded and restored. Add names here for modules that keep sizes elsewhere.
MANIFEST_ATTRS: set[str] = {
    # torch.nn
    "in_features", "out_features", "in_channels", "out_channels", "num_features",
    "normalized_shape", "num_groups", "num_channels", "num_embeddings", "embedding_dim",
    "embed_dim", "kdim", "vdim", "num_heads", "head_dim", "groups", "hidden_size", "input_size",
    # Hugging Face transformers
    "num_attention_heads", "num_key_value_heads", "num_key_value_groups", "attention_head_size",
    "all_head_size", "intermediate_size", "nf", "nx", "split_size", "inner_dim", "n_heads",
    "n_head", "key_value_proj_dim", "d_model", "num_kv_heads",
    # head counts that structure-found attention updates (prunekit.structure.attention)
    "heads", "num_attn_heads", "n_kv_heads",
    # MoE blocks (prunekit.structure.experts)
    "num_experts", "hidden_dim", "intermediate_dim",
}  # fmt: skip

#: index lists a shrunk module gains (a fresh one has none) -> the count attributes they index
#: (the first the module has; Bloom's num_heads, MPT's n_heads): the
#: original positions of the heads a layer kept (prunekit.structure.bloom: ALiBi slopes), strictly
#: increasing, as many as the module's final count
MANIFEST_INDEX_ATTRS: dict[str, tuple[str, ...]] = {
    "alibi_heads": ("num_heads", "n_heads"),
    "gate_heads": ("num_heads",),  # WavLM: the input block gating each head (structure.wavlm)
    "bias_heads": ("num_attn_heads",),  # ProphetNet: the bias each head takes (prophetnet_ngram)
    "rotation_heads": ("num_attention_heads",),  # Reformer LSH: rotations (structure.reformer)
}

#: float attributes recorded and restored: structured shrinking folds a width change into the
#: epsilon of RMS norms (prunekit.structure.shrink.rescale_rms_norms)
MANIFEST_FLOAT_ATTRS: set[str] = {"variance_epsilon", "eps"}

#: attention attributes bound by ``heads * head_dim == width`` and ``kv_heads * groups == heads``
#: wherever the fresh model satisfies those products (as every head adapter keeps them)
HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
HEAD_DIMS = ("head_dim", "attention_head_size", "key_value_proj_dim")
HEAD_WIDTHS = ("all_head_size", "inner_dim", "split_size")
PRODUCTS = [(h, d, w) for h in HEAD_COUNTS for d in HEAD_DIMS for w in HEAD_WIDTHS] + [
    ("num_key_value_heads", "num_key_value_groups", h) for h in HEAD_COUNTS
]
#: the one size attribute that may grow when heads are pruned (query heads per KV head): it is
#: checked as the ratio of its children's q and k rows
GROWING_ATTRS = {"num_key_value_groups"}


_ENTRY = {"tensors", "attrs", "dtypes"}


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
        for a in sorted(MANIFEST_ATTRS | MANIFEST_INDEX_ATTRS.keys()):
            v = _size_value(module.__dict__.get(a))
            if v is not None:
                attrs[a] = v
        for a in sorted(MANIFEST_FLOAT_ATTRS):
            v = module.__dict__.get(a)
            if isinstance(v, float) and math.isfinite(v):
                attrs[a] = v
        if tensors or attrs:
            modules[name] = {"tensors": tensors, "attrs": attrs, "dtypes": dtypes}
    return {"modules": modules}


def _bad(msg: str) -> CheckpointError:
    return CheckpointError(f"shape manifest does not fit this model: {msg}")


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise _bad(f"{where} has a malformed shape {value!r}")
    return tuple(value)


Shapes = list[tuple[tuple[int, ...], tuple[int, ...]]]


@dataclass
class ManifestPlan:
    """A checked manifest: the resizes, attribute values and buffer casts it makes."""

    #: qualified tensor name -> new shape (only tensors that shrink)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    resizes: list[tuple[nn.Module, str, tuple[int, ...]]] = field(default_factory=list)
    attrs: list[tuple[nn.Module, str, Any]] = field(default_factory=list)
    casts: list[tuple[nn.Module, str, torch.dtype]] = field(default_factory=list)

    @torch.no_grad()
    def apply(self) -> None:
        """Resize the model (resized tensors are uninitialised: load the weights next)."""
        for module, pname, shape in self.resizes:
            old = getattr(module, pname)
            new = torch.empty(shape, dtype=old.dtype, device=old.device)
            if pname in module._parameters:
                module._parameters[pname].data = new  # keeps the Parameter: ties stay tied
            else:
                module._buffers[pname] = new
        for module, bname, dtype in self.casts:
            module._buffers[bname] = module._buffers[bname].to(dtype)
        for module, attr, value in self.attrs:
            setattr(module, attr, value)


def _kind(dtype: torch.dtype) -> str:
    return "float" if dtype.is_floating_point else "bool" if dtype == torch.bool else "int"


def _plan_tensors(
    plan: ManifestPlan, name: str, module: nn.Module, entry: Any, float_dtypes: set[torch.dtype]
) -> dict[str, Any]:
    """Check one module's entry and add its resizes and casts to ``plan``; its recorded attrs."""
    if not isinstance(entry, dict) or set(entry) - _ENTRY:
        raise _bad(f"module {name!r} has a malformed entry")
    own = _tensors(module)
    tensors, recorded = entry.get("tensors", {}), entry.get("attrs", {})
    dtypes = entry.get("dtypes", {})
    if not all(isinstance(x, dict) for x in (tensors, recorded, dtypes)):
        raise _bad(f"module {name!r} has a malformed entry")
    for bname, dtype in dtypes.items():
        if bname not in module._non_persistent_buffers_set or own.get(bname) is None:
            raise _bad(f"{name}.{bname} is not a non-persistent buffer")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise _bad(f"{name}.{bname} has an unknown dtype {dtype!r}")
        new, old = DTYPES[dtype], own[bname].dtype
        if new == old:
            continue
        if _kind(new) != _kind(old) or (new.is_floating_point and new not in float_dtypes):
            allowed = sorted(map(dtype_name, float_dtypes))
            raise _bad(
                f"{name}.{bname} is {old} and cannot become {new}: a save records the dtype of a "
                f"model cast to one of its weights' dtypes ({allowed})"
            )
        plan.casts.append((module, bname, new))
    for pname, shape in tensors.items():
        t = own.get(pname)
        where = f"{name}.{pname}" if name else pname
        if t is None:
            raise _bad(f"{where} is not a tensor of {type(module).__name__}")
        shape = _shape(shape, where)
        if len(shape) != t.dim() or any(a > b for a, b in zip(shape, t.shape, strict=True)):
            raise _bad(f"{where} {tuple(t.shape)} cannot shrink to {shape}")
        if shape != tuple(t.shape):
            if pname in module._non_persistent_buffers_set:
                raise _bad(f"non-persistent buffer {where} would need shape {shape}")
            plan.resizes.append((module, pname, shape))
            plan.shapes[where] = shape
    for attr, value in recorded.items():
        current = module.__dict__.get(attr)
        if attr in MANIFEST_FLOAT_ATTRS and isinstance(current, float):
            ok = isinstance(value, float)
        elif attr in MANIFEST_INDEX_ATTRS:
            ok = isinstance(value, list) and _size_value(value) is not None
        else:
            ok = (
                attr in MANIFEST_ATTRS
                and _size_value(current) is not None
                and _size_value(value) is not None
                and isinstance(value, list) == isinstance(current, (tuple, list))
            )
        if not ok:
            raise _bad(f"attribute {name}.{attr} cannot be set to {value!r}")
    return recorded


def _shapes(prefix: str, module: nn.Module, plan: ManifestPlan, children: bool = False) -> Shapes:
    """(fresh shape, planned shape) of the module's own tensors (and its children's), less the
    non-persistent buffers: rebuilt whole by the constructor, they describe no size that a
    shrink changes (Swinv2's ``[16, 16]`` position index beside an ``all_head_size`` of 16)."""
    out = []
    for child_name, child in [("", module), *(module.named_children() if children else ())]:
        path = ".".join(p for p in (prefix, child_name) if p)
        for pname, t in _tensors(child).items():
            if t is not None and pname not in child._non_persistent_buffers_set:
                where = f"{path}.{pname}" if path else pname
                out.append((tuple(t.shape), plan.shapes.get(where, tuple(t.shape))))
    return out


def _describes(c: Any, v: Any, shapes: Shapes) -> bool:
    """False when the fresh value ``c`` is the module's own tensor's shape or dimension and ``v``
    is not the planned tensors' shape or dimension in the same place."""
    if isinstance(c, tuple):
        cands = [p for f, p in shapes if f == c]
        return not cands or tuple(v) in cands
    cands = [p[i] for f, p in shapes for i in range(len(f)) if f[i] == c]
    return not cands or v in cands


def _ratio_fits(c: int, v: int, shapes: Shapes) -> bool:
    """For query heads per KV head: a ratio of two dimensions of the children (q rows / k rows;
    or, for a fused qkv projection, q rows / half of what the fused rows hold beyond them) that
    is ``c`` in the fresh model must be ``v`` in the planned one."""
    dims = [(f[i], p[i]) for f, p in shapes for i in range(len(f))]
    cands = [
        p1 // p2
        for f1, p1 in dims
        for f2, p2 in dims
        if f2 and f1 % f2 == 0 and f1 // f2 == c and p2 and p1 % p2 == 0
    ] + [
        q1 // kv1
        for fused0, fused1 in dims
        for q0, q1 in dims
        for kv0, kv1 in [((fused0 - q0) // 2, (fused1 - q1) // 2)]  # [q | k | v] rows
        if kv0 > 0 and kv1 > 0 and q0 == c * kv0 and q1 % kv1 == 0 and fused0 - q0 == 2 * kv0
    ]
    return not cands or v in cands


def _grouped_conv(module: nn.Module) -> bool:
    """A grouped convolution: its ``in_channels`` is no dimension of its weight (an equal
    ``out_channels`` is: a coincidence that :func:`_describes` must not read)."""
    conv = isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
    return conv and module.groups > 1


def _weight_columns(name: str, module: nn.Module, plan: ManifestPlan) -> int:
    """Dimension 1 of the module's planned weight; a parametrized weight's from its original
    (weight norm's ``v``: ``original1``)."""
    keys = ("weight", "parametrizations.weight.original", "parametrizations.weight.original1")
    shape = next((plan.shapes[k] for k in (f"{name}.{k}" for k in keys) if k in plan.shapes), None)
    return (shape or module.weight.shape)[1]


def _plan_attrs(name: str, module: nn.Module, recorded: dict[str, Any], plan: ManifestPlan) -> None:
    """Check every size attribute of ``module``, recorded or kept, against the planned tensors."""
    fresh = {
        a: module.__dict__[a]
        for a in MANIFEST_ATTRS
        if _size_value(module.__dict__.get(a)) is not None
    }
    if not fresh and not recorded:
        return
    shapes = _shapes(name, module, plan)
    final = {a: recorded.get(a, c) for a, c in fresh.items()}
    for a, c in fresh.items():
        v = final[a]
        new, old = (list(v), list(c)) if isinstance(c, (tuple, list)) else ([v], [c])
        if len(new) != len(old) or any(
            x != o and (x < 1 or (x > o and a not in GROWING_ATTRS))
            for x, o in zip(new, old, strict=False)
        ):
            raise _bad(f"attribute {name}.{a} = {v!r} is not a positive size of at most {c!r}")
        if a in GROWING_ATTRS:
            fits = _ratio_fits(c, v, _shapes(name, module, plan, children=True))
        elif a == "in_channels" and _grouped_conv(module):  # weight [out, in / groups, *k]
            fits = v == final["groups"] * _weight_columns(name, module, plan)
        else:
            fits = _describes(c, v, shapes)
        if not fits:
            raise _bad(f"attribute {name}.{a} = {v!r} does not describe the saved tensors")
    for a, b, w in PRODUCTS:
        holds = a in fresh and b in fresh and w in fresh and fresh[a] * fresh[b] == fresh[w]
        if holds and final[a] * final[b] != final[w]:
            raise _bad(f"{name}: {a} * {b} != {w} ({final[a]} * {final[b]} != {final[w]})")
    for attr, counts in MANIFEST_INDEX_ATTRS.items():
        value = recorded.get(attr)
        count = next((c for c in counts if isinstance(fresh.get(c), int)), counts[0])
        if value is not None and not (
            isinstance(fresh.get(count), int)
            and len(value) == final[count]
            and all(a < b for a, b in zip([-1, *value], [*value, fresh[count]], strict=True))
        ):
            raise _bad(f"{name}.{attr} = {value!r} is not {final.get(count)} increasing indices")
    for attr, value in recorded.items():
        if attr in MANIFEST_INDEX_ATTRS:
            plan.attrs.append((module, attr, list(value)))
        elif attr in MANIFEST_FLOAT_ATTRS:
            _check_eps(name, module, attr, value, shapes)
            plan.attrs.append((module, attr, value))
        else:
            plan.attrs.append(
                (module, attr, tuple(value) if isinstance(fresh[attr], tuple) else value)
            )


def _check_eps(name: str, module: nn.Module, attr: str, value: float, shapes: Shapes) -> None:
    """A norm's epsilon is kept, or scaled by D/D' where its width shrank from D to D'
    (``prunekit.structure.shrink.rescale_rms_norms``)."""
    eps = module.__dict__[attr]
    allowed = [eps]
    w = module._parameters.get("weight")
    if w is not None and w.dim() == 1:
        planned = next(p for f, p in shapes if f == tuple(w.shape))
        if planned[0]:
            allowed.append(eps * (w.shape[0] / planned[0]))
    if not any(math.isclose(value, a, rel_tol=1e-9) for a in allowed):
        raise _bad(f"{name}.{attr} = {value!r}, where a save writes one of {allowed}")


def plan_shape_manifest(
    model: nn.Module, manifest: Any, float_dtypes: set[torch.dtype] | None = None
) -> ManifestPlan:
    """Check ``manifest`` against a freshly built ``model`` without touching it.

    A recorded tensor may only shrink (no dimension grows, the rank stays), so a tampered manifest
    cannot make the loader allocate more than the model. Non-persistent buffers cannot be restored
    from weights: they keep their shape, and may only take a floating dtype in ``float_dtypes``
    (the dtypes of the checkpoint's tensors; by default the model's).
    """
    if not isinstance(manifest, dict) or not isinstance(manifest.get("modules"), dict):
        raise _bad("it is not a {'modules': {...}} mapping")
    if float_dtypes is None:
        float_dtypes = {t.dtype for t in model.state_dict().values() if t.is_floating_point()}
    modules = dict(model.named_modules())
    plan = ManifestPlan()
    recorded: dict[str, dict[str, Any]] = {}
    for name, entry in manifest["modules"].items():
        module = modules.get(name)
        if module is None:
            raise _bad(f"module {name!r} is missing from the model")
        recorded[name] = _plan_tensors(plan, name, module, entry, float_dtypes)
    for name, module in modules.items():  # every module: a kept attribute must fit too
        _plan_attrs(name, module, recorded.get(name, {}), plan)
    return plan


def apply_shape_manifest(model: nn.Module, manifest: Any) -> nn.Module:
    """Resize a freshly built ``model`` to the recorded shapes and attributes, in place.

    Everything is checked (:func:`plan_shape_manifest`) before the model is touched.
    """
    plan_shape_manifest(model, manifest).apply()
    return model
