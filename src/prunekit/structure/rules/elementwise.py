"""Pointwise ops: operands broadcast together, so channels at one position are one channel."""

from __future__ import annotations

import torch

from ..graph import Call
from ..propagate import Example, Rule, State, first_output, register, tensors_of, varying
from ..shapes import broadcast
from ._examples import VEC, mlp_around

#: the reason a channel combined with attention scores (a product of activations) stays: that
#: dimension is the heads', pruned by granularity="head" (an expected reason: no warning)
PRODUCT_OPERAND = "that multiplies activations (attention scores: heads go by head pruning)"

_OPS = (
    "add", "sub", "mul", "div", "true_divide", "rsub", "neg", "relu", "relu6", "gelu", "silu",
    "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu", "selu", "mish",
    "softplus", "dropout", "dropout1d", "dropout2d", "dropout3d", "pow", "sqrt", "rsqrt", "exp",
    "log", "abs", "clamp", "clip", "sin", "cos", "erf", "masked_fill", "where", "square",
    "reciprocal", "fill", "zero", "lerp", "addcmul", "addcdiv", "maximum", "minimum", "sign", "eq",
    "ne", "lt", "le", "gt", "ge", "logical_not", "floor_divide", "remainder", "fmod", "__and__",
    "__or__", "__mul__", "__add__", "__sub__", "__truediv__", "__rmul__", "__radd__", "__rsub__",
    "__rtruediv__", "__neg__", "__pow__", "__rpow__", "__iadd__", "__imul__", "__isub__",
    "__itruediv__", "__eq__", "__ne__", "__lt__", "__gt__", "__le__", "__ge__", "__invert__",
    "nan_to_num", "tril", "triu", "alpha_dropout", "feature_alpha_dropout", "celu", "logsigmoid",
    "tanhshrink", "softsign", "threshold", "rrelu", "copysign", "hypot", "atan2", "expm1", "log1p",
)  # fmt: skip


class Elementwise(Rule):
    """Join the channels of every operand at each output position; a parameter used as data (or
    a tensor holding a single id, such as a rotary table of one frequency) is sliced along the
    channels it is broadcast over, or kept whole where shared by all."""

    ops = _OPS
    examples = (
        Example(lambda: mlp_around(lambda h: torch.relu(h) * 2 + torch.sigmoid(h) - h / 3), VEC),
    )

    untracked = True  # scaled or masked attention scores are still scores (st.products)

    def apply(self, call: Call, st: State) -> None:
        out = first_output(call)
        if out is None:
            return
        ins = tensors_of((call.args, call.kwargs))
        if any(id(t) in st.products for t in ins):
            st.products.add(id(out))
        if not any(st.tracked(t) for t in ins):
            return
        shape = out.shape
        known, unknown, shared = [], [], []
        for t in ins:
            a = st.small(t)
            if a is not None and a.dim() < len(shape):
                a = a.view((1,) * (len(shape) - a.dim()) + tuple(a.shape))
            if a is not None and (id(t) in st.data or a.numel() == 1):
                shared.append((t, a))  # a parameter used as data, or one id: decided below
            else:
                (known if a is not None else unknown).append((t, a))
        vary = {d for _, a in known for d in varying(a)}
        if st.heads:  # per-head ids stay apart: a table applied to activations (rotary) is shared
            table = [st.from_data(a) for _, a in known]
            table = table if not all(table) else [False] * len(known)
            shared += [k for k, is_table in zip(known, table, strict=True) if is_table]
            known = [k for k, is_table in zip(known, table, strict=True) if not is_table]
        for t, a in shared:
            if any(a.shape[d] == 1 for d in vary):  # shared by every channel: never sliced
                unknown.append((t, None))
            else:
                known.append((t, a))
        if not known:
            st.set(out, None)
            return
        try:
            smalls = torch.broadcast_tensors(*[a for _, a in known])
        except RuntimeError:
            smalls = None
        if smalls is None or broadcast(smalls[0].shape, shape) is None:
            st.refuse(call, "operands do not broadcast to the output")
            return
        res = smalls[0]
        for b in smalls[1:]:
            st.join(res, b)
            res = torch.where(res >= 0, res, b)
        vary = varying(res)
        for t, _ in unknown:
            lead = (1,) * (len(shape) - t.dim()) + tuple(t.shape)
            if any(lead[d] > 1 for d in vary):  # a product's dims (heads of scores) never go
                why = "of unknown origin" if id(t) not in st.products else PRODUCT_OPERAND
                st.block(res, call, f"combined with a tensor {why} along a channel")
        st.set(out, res)


class Identity(Rule):
    """Copies and dtype or device casts: the output has the input's channels."""

    ops = (
        "to", "type", "float", "half", "bfloat16", "double", "type_as", "detach", "contiguous",
        "clone", "cpu", "cuda", "requires_grad_", "__deepcopy__",
    )  # fmt: skip
    examples = (
        Example(lambda: mlp_around(lambda h: h.double().float().contiguous().clone()), VEC),
    )

    def apply(self, call: Call, st: State) -> None:
        st.set(call.out, st.small(call.args[0]))


ELEMENTWISE = register("elementwise", Elementwise())
register("identity", Identity())
