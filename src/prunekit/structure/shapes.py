"""Output shapes of the costly ops, for the shape-only trace (:mod:`.graph`).

Each formula returns the shape of what the op would return, or None where the call is not one
it covers (the trace then computes the op). Formulas, not meta kernels: the first meta call of
a convolution or an ``addmm`` loads torch's Python meta registrations (about a second), and a
meta attention costs milliseconds a call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Shape = tuple[int, ...]


def broadcast(*shapes: tuple[int, ...]) -> Shape | None:
    """The broadcast of ``shapes``, or None if they do not broadcast. (``torch.broadcast_shapes``
    imports sympy on its first call: about a second.)"""
    rank = max(map(len, shapes))
    out: list[int] = []
    for dims in zip(*(((1,) * (rank - len(s)) + tuple(s)) for s in shapes), strict=True):
        sizes = {n for n in dims if n != 1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any = None) -> Any:
    return args[pos] if len(args) > pos else kwargs.get(name, default)


def _linear(args: tuple, kwargs: dict) -> Shape | None:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        return None
    return (*x.shape[:-1], w.shape[0])


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _conv(args: tuple, kwargs: dict) -> Shape | None:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    n = w.dim() - 2
    stride = _tuple(_arg(args, kwargs, 3, "stride", 1), n)
    padding = _arg(args, kwargs, 4, "padding", 0)
    dilation = _tuple(_arg(args, kwargs, 5, "dilation", 1), n)
    groups = _arg(args, kwargs, 6, "groups", 1)
    if x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != w.shape[1] * groups:
        return None
    if padding == "same" and all(s == 1 for s in stride):
        return (*x.shape[: -n - 1], w.shape[0], *x.shape[-n:])
    pad = (0,) * n if padding == "valid" else padding
    if isinstance(pad, str):
        return None
    pad = _tuple(pad, n)
    size = [
        (i + 2 * p - d * (k - 1) - 1) // s + 1
        for i, p, d, k, s in zip(x.shape[-n:], pad, dilation, w.shape[2:], stride, strict=True)
    ]
    return None if min(size) < 1 else (*x.shape[: -n - 1], w.shape[0], *size)


def _matmul(args: tuple, kwargs: dict) -> Shape | None:
    a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        return None  # vectors: computed
    batch = broadcast(a.shape[:-2], b.shape[:-2])
    return None if batch is None else (*batch, a.shape[-2], b.shape[-1])


def _attention(args: tuple, kwargs: dict) -> Shape | None:
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    if q.dim() < 2 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        return None
    return (*q.shape[:-1], v.shape[-1])


#: op name -> shape formula
FORMULAS: dict[str, Callable[[tuple, dict], Shape | None]] = {
    "linear": _linear,
    "conv1d": _conv,
    "conv2d": _conv,
    "conv3d": _conv,
    "matmul": _matmul,
    "__matmul__": _matmul,
    "mm": _matmul,
    "bmm": _matmul,
    "scaled_dot_product_attention": _attention,
}


#: out-of-place ops whose output is shaped like their first tensor (eval-mode norms, activations)
#: or, for elementwise arithmetic, like all their tensors when those agree in shape and layout
LIKE_INPUT = {"batch_norm", "relu", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "relu6"}
ELEMENTWISE = {"add", "__add__", "__radd__", "sub", "__sub__", "mul", "__mul__", "__rmul__"}
#: in-place elementwise ops: on a tensor whose values are unknown, they leave it unknown
IN_PLACE = {
    "relu_", "add_", "sub_", "mul_", "div_", "clamp_", "clamp_min_", "hardtanh_", "sigmoid_",
    "tanh_", "silu_", "leaky_relu_", "elu_", "__iadd__", "__isub__", "__imul__", "__itruediv__",
}  # fmt: skip
#: activations with an ``inplace`` flag (``nn.ReLU(inplace=True)``)
INPLACE_FLAG = {"relu", "silu", "hardtanh", "relu6", "leaky_relu", "elu"}


def in_place(name: str, args: tuple, kwargs: dict) -> bool:
    """The call writes its result into its first argument, elementwise, and returns it."""
    if name in IN_PLACE:
        return True
    flag = kwargs.get("inplace", any(a is True for a in args[1:]))
    return name in INPLACE_FLAG and flag is True


def like_input(name: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """An uninitialised tensor shaped (and laid out) like the first tensor argument of a
    :data:`LIKE_INPUT` or :data:`ELEMENTWISE` op, or None where the call is not one they
    cover."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    if (
        not tensors
        or "out" in kwargs
        or kwargs.get("inplace")
        or not tensors[0].is_floating_point()
    ):
        return None
    x = tensors[0]
    if name in ELEMENTWISE:
        if any(a is not x and not isinstance(a, torch.Tensor) for a in args[:2]) or any(
            t.shape != x.shape or t.dtype != x.dtype or t.stride() != x.stride()
            or t.device != x.device
            for t in tensors
        ):  # fmt: skip
            return None  # scalars, broadcasting or type promotion: computed
    elif name not in LIKE_INPUT or any(a is True for a in args[1:]):  # inplace=True positional
        return None
    return torch.empty_like(x)


def like_output(name: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """An uninitialised tensor (its values are never read) shaped like what op ``name``
    returns on ``args`` (floating inputs of one dtype and device; a 4-D channels-last input
    gives a channels-last output), or None if no formula covers the call."""
    formula = FORMULAS.get(name)
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    if formula is None or "out" in kwargs or len(tensors) < 2:
        return None
    x = tensors[0]
    if not x.is_floating_point() or any(
        t.device != x.device or (t.is_floating_point() and t.dtype != x.dtype) for t in tensors
    ):
        return None
    shape = formula(args, kwargs)
    if shape is None or math.prod(shape) == 0:
        return None
    last = torch.channels_last
    layout = (
        last
        if len(shape) == 4 and x.dim() == 4 and x.is_contiguous(memory_format=last)
        and not x.is_contiguous()
        else torch.contiguous_format
    )  # fmt: skip
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
