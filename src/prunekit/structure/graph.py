"""Trace a real forward pass into a list of torch-level calls.

The trace runs the model once on ``example_inputs`` under a
:class:`torch.overrides.TorchFunctionMode` and records every torch function or tensor method that
touches a tensor, with its real input and output tensors and the qualified name of the module whose
``forward`` issued it. Python control flow, Hugging Face attention dispatch and KV caches simply
run: nothing is symbolically traced, so any model that runs can be analysed.

The channel rules read shapes and index values, never the values of activations, so the trace
first runs *shape-only*: convolutions, linears, matmuls and attention return uninitialised
tensors of their output's shape (:mod:`.shapes`), and every tensor computed from such a one is
*unknown*; norms, activations and elementwise arithmetic on unknown tensors are not computed
either (their values are never read). Index
tensors and the model's inputs stay exact. If the model reads an unknown value (``bool``,
``item``, a comparison, a cast to integers: routing, data-dependent control flow) or stores one
in a parameter, buffer or module attribute, the trace starts over with every op computed
(:attr:`Graph.exact`), the module state it changed put back first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import TargetError
from ..example_inputs import seeded
from ..masks import arm, is_armed, mask_names
from ..outputs import flatten
from .shapes import ELEMENTWISE, FORMULAS, LIKE_INPUT, in_place, like_input, like_output

#: calls that only read metadata; never recorded
_METADATA = {
    "__get__",
    "size",
    "dim",
    "numel",
    "__len__",
    "is_floating_point",
    "data_ptr",
    "__bool__",
    "item",
    "tolist",
    "__format__",
    "__repr__",
    "stride",
    "is_contiguous",
    "element_size",
    "get_device",
    "nelement",
    "__hash__",
    "__iter__",
    "is_complex",
    "storage_offset",
    "ndimension",
    "untyped_storage",
    "__index__",
    "__int__",
    "__float__",
    "requires_grad_",
    "__reduce_ex__",
    "__setstate__",
    "__deepcopy__",
    "has_names",
    "is_nonzero",
    "_is_view",
    "__contains__",
}


#: tensor properties that transpose (recorded as calls; every other property is metadata)
_TRANSPOSING = {"T", "mT"}

#: metadata calls that read an unknown value (the rest read shapes, dtypes and devices)
_READS_VALUES = {
    "__bool__", "item", "tolist", "__format__", "__repr__", "__int__", "__float__", "__index__",
    "is_nonzero", "__iter__", "__contains__", "__reduce_ex__", "__deepcopy__", "data_ptr",
    "untyped_storage", "__setstate__",
}  # fmt: skip


class _NeedsValues(Exception):
    """A shape-only trace met a model that reads or stores an unknown value."""


@dataclass
class Call:
    """One recorded call: ``func(*args, **kwargs) -> out`` issued by module ``module``."""

    func: Callable
    name: str
    args: tuple
    kwargs: dict
    out: Any
    module: str

    def where(self) -> str:
        return f"{self.name} in module {self.module or '<root>'}"


@dataclass
class Graph:
    """The recorded calls of one forward pass, plus what names every parameter and buffer."""

    model: nn.Module
    calls: list[Call]
    outputs: Any
    #: id(tensor) -> [(module name, module, attribute name)] for parameters and buffers
    owners: dict[int, list[tuple[str, nn.Module, str]]] = field(default_factory=dict)
    #: every op was computed: ``outputs`` are the model's (False: a shape-only trace)
    exact: bool = True

    def tensors(self, value: Any) -> list[torch.Tensor]:
        """Every tensor inside a (nested) value, caches excluded."""
        return [t for t in flatten(value) if isinstance(t, torch.Tensor)]

    def owner(self, t: torch.Tensor) -> tuple[str, nn.Module, str] | None:
        found = self.owners.get(id(t))
        return found[0] if found else None


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on example inputs: a tensor, a tuple/list of positional args, or a dict of
    keyword arguments. The forward draws its random numbers from a fixed seed (:func:`seeded`),
    so a model that samples in eval mode (ViTMAE's patch masking) gives the same outputs on every
    call: the masked and the shrunk model are compared on the same draws."""
    with seeded(inputs):
        if isinstance(inputs, dict):
            return model(**inputs)
        if isinstance(inputs, (tuple, list)):
            return model(*inputs)
        return model(inputs)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside, its train flag restored after; nothing is switched where
    every module is in eval mode already."""
    if not any(m.training for m in model.modules()):
        yield
        return
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def check_inputs(inputs: Any) -> None:
    if inputs is None:
        raise TargetError(
            "structured pruning needs example_inputs: a tensor, a tuple of positional inputs or a "
            "dict of keyword inputs that the model accepts"
        )


def is_rms_norm(module: nn.Module) -> bool:
    """An RMS norm module (Llama, Mistral, Qwen2, T5 ...): ``w * x / sqrt(mean(x²) + eps)`` over
    the last dimension, checked on a probe input (Gemma's ``(1 + w)`` variant is not one). Its
    forward is recorded as one ``rms_norm_module`` call."""
    name = type(module).__name__
    w = getattr(module, "weight", None)
    eps = eps_attr(module)
    if not (name.endswith("RMSNorm") or name == "T5LayerNorm"):
        return False
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or eps is None:
        return False
    x = torch.randn(3, w.shape[0], generator=torch.Generator().manual_seed(0)).to(w)
    with torch.no_grad():
        try:
            y = module(x)
        except Exception:  # any failure means "not the norm we know"
            return False
        ref = w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + getattr(module, eps))
    return isinstance(y, torch.Tensor) and torch.allclose(y, ref, rtol=1e-4, atol=1e-6)


def eps_attr(module: nn.Module) -> str | None:
    for attr in ("variance_epsilon", "eps"):
        if isinstance(getattr(module, attr, None), float):
            return attr
    return None


class _Recorder(TorchFunctionMode):
    def __init__(self, stack: list[str], shape_only: bool, owned: set[int]) -> None:
        super().__init__()
        self.stack = stack
        self.calls: list[Call] = []
        #: > 0 while inside a module recorded as one call
        self.opaque = 0
        self.shape_only = shape_only
        self.owned = owned
        #: id -> tensor (kept alive, so no id is reused) of every tensor holding unknown values
        self.unknown: dict[int, torch.Tensor] = {}

    def _unknown(self, func, name: str, args: tuple, kwargs: dict) -> Any:
        """Run ``func`` with unknown values tracked; raise :class:`_NeedsValues` where they
        would matter. Returns the output."""
        ins = [t for t in flatten((args, kwargs)) if isinstance(t, torch.Tensor)]
        touched = any(id(t) in self.unknown for t in ins)
        writes = name == "__setitem__" or (name.endswith("_") and not name.endswith("__"))
        target = kwargs.get("out", args[0] if writes and args else None)
        if touched and isinstance(target, torch.Tensor) and id(target) in self.owned:
            raise _NeedsValues(f"{name} writes into a parameter or buffer")  # before it does
        if touched and name in _READS_VALUES:
            raise _NeedsValues(name)
        out = None
        if name in FORMULAS:  # the costly ops: a tensor of their output's shape
            out = like_output(name, args, kwargs)
            touched = touched or out is not None
        elif touched and args and id(args[0]) in self.unknown and in_place(name, args, kwargs):
            out = args[0]  # stays unknown: nothing to compute
        elif touched and (name in LIKE_INPUT or name in ELEMENTWISE):
            out = like_input(name, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if not touched:
            return out
        if isinstance(target, torch.Tensor):
            self.unknown[id(target)] = target
        for t in flatten(out):
            if isinstance(t, torch.Tensor):
                if not (t.is_floating_point() or t.is_complex()):
                    raise _NeedsValues(f"{name} makes {t.dtype} values")
                self.unknown[id(t)] = t
            elif t is not None and name not in _METADATA and not isinstance(t, torch.Size):
                raise _NeedsValues(f"{name} returns {type(t).__name__}")
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name == "__get__":  # a property: record the transposing ones (x @ W.T layers)
            name = getattr(getattr(func, "__self__", None), "__name__", name)
            name = name if name in _TRANSPOSING else "__get__"
        out = self._unknown(func, name, args, kwargs) if self.shape_only else func(*args, **kwargs)
        if (
            name not in _METADATA
            and not self.opaque
            and (
                isinstance(out, torch.Tensor)
                or any(isinstance(a, torch.Tensor) for a in flatten((args, kwargs)))
            )
        ):
            # snapshot list arguments: a DenseNet block appends to the list it concatenates
            args = tuple(list(a) if isinstance(a, list) else a for a in args)
            self.calls.append(Call(func, name, args, kwargs, out, self.stack[-1]))
        return out


def opaque_kind(module: nn.Module) -> tuple[str, int] | None:
    """Modules recorded as one call (op name, channel dimension) instead of their inner ops: RMS
    norms (``rms_norm_module``, args x and weight) and LayerNorms whose channels can go
    (``layer_norm_module``, args x, weight and bias), whose masked forward corrects its
    statistics."""
    from .masked_norm import norm_dim

    if is_rms_norm(module):
        return "rms_norm_module", -1
    dim = norm_dim(module)
    return ("layer_norm_module", dim) if dim is not None else None


def _module_hooks(model: nn.Module, stack: list[str], rec: _Recorder) -> Iterator[Any]:
    for name, module in model.named_modules():
        kind = opaque_kind(module)

        def pre(mod, args, _name=name, _opaque=kind is not None):
            stack.append(_name)
            rec.opaque += _opaque

        def post(mod, args, out, _kind=kind):
            stack.pop()
            if _kind is not None:
                rec.opaque -= 1
                if not rec.opaque:
                    op, dim = _kind
                    tensors = (args[0], mod.weight, getattr(mod, "bias", None))
                    n = 2 if op == "rms_norm_module" else 3
                    call = Call(mod.forward, op, tensors[:n], {"dim": dim}, out, stack[-1])
                    rec.calls.append(call)

        yield module.register_forward_pre_hook(pre)
        yield module.register_forward_hook(post, always_call=True)


@torch.no_grad()
def trace(model: nn.Module, example_inputs: Any, *, exact: bool = False) -> Graph:
    """Record one forward pass of ``model`` (in eval mode) on ``example_inputs``: shape-only
    where the model allows it (see the module docstring), every op computed with ``exact``."""
    check_inputs(example_inputs)
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for pname, p in list(module._parameters.items()) + list(module._buffers.items()):
            if p is not None:
                owners.setdefault(id(p), []).append((mod_name, module, pname))
    for module in model.modules():  # arm copied masks now, not inside the recorded forward
        if not is_armed(module) and any(True for _ in mask_names(module)):
            arm(module)
    if not exact:
        held = _held_tensors(model)
        try:
            graph = _record(model, example_inputs, owners, shape_only=True)
            if _restore(held):  # else it stored a tensor: no cache may keep its zeros
                return graph
        except Exception:  # _NeedsValues, an op without a meta kernel, code that fails on zeros
            _restore(held)
    return _record(model, example_inputs, owners, shape_only=False)


Held = list[tuple[dict, dict]]
_MISSING = object()


def _held_tensors(model: nn.Module) -> Held:
    """A shallow copy of every module's parameters, buffers and attributes (caches)."""
    return [
        (store, dict(store))
        for m in model.modules()
        for store in (m._parameters, m._buffers, m.__dict__)
    ]


def _restore(held: Held) -> bool:
    """Put back every tensor (or the value a tensor replaced) a module held before; True if
    none had changed."""
    same = True
    for store, before in held:
        for key in set(before) | set(store):
            old, new = before.get(key, _MISSING), store.get(key, _MISSING)
            if old is not new and (isinstance(old, torch.Tensor) or isinstance(new, torch.Tensor)):
                same = False
                if old is _MISSING:
                    del store[key]
                else:
                    store[key] = old
    return same


def _record(model: nn.Module, example_inputs: Any, owners: dict, shape_only: bool) -> Graph:
    stack = [""]
    recorder = _Recorder(stack, shape_only, set(owners))
    handles = list(_module_hooks(model, stack, recorder))
    try:
        with eval_mode(model), recorder:
            outputs = call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return Graph(model, recorder.calls, outputs, owners, exact=not shape_only)
