"""Weight ops on the last dimension: ``F.linear``, ``x @ W`` (Hugging Face ``Conv1D``), and
products of activations (attention scores), which keep their channels."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..graph import Call
from ..propagate import Example, Rule, State, arg, compress, register, tensors_of
from ._examples import VEC, Fn, mlp_around


class _MatMulHead(nn.Module):
    """A Linear, then ``h @ W`` with ``W`` a parameter stored ``[in, out]``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.w = nn.Parameter(torch.randn(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.inp(x)) @ self.w


class _TransposedLinears(nn.Module):
    """Linears written as ``x @ W.T`` (Falcon's ``FalconLinear``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.a.weight.T + self.a.bias) @ self.b.weight.T


def hf_conv1d() -> nn.Module:
    from transformers.pytorch_utils import Conv1D  # x @ W through torch.addmm

    return nn.Sequential(Conv1D(16, 8), Fn(torch.relu), Conv1D(4, 16))


def consume(
    st: State, call: Call, x_atoms: torch.Tensor | None, cols: torch.Tensor, channel_dim: int
) -> None:
    """Link the input channels of a weight op (``x`` along ``channel_dim``) to ``cols``."""
    if x_atoms is None:
        st.block(cols, call, "fed by a model input or an untracked tensor")
        return
    x_atoms = compress(x_atoms)
    ch = channel_dim % x_atoms.dim()
    x_atoms = x_atoms.expand(*[cols.numel() if d == ch else n for d, n in enumerate(x_atoms.shape)])
    xa = x_atoms.movedim(ch, -1).reshape(-1, cols.numel())  # [rest, C]
    st.join(cols.expand_as(xa), xa)
    st.block(cols[(xa < 0).any(0)], call, "fed by a model input or an untracked tensor")


def bind(st: State, p: Any, dim: int, atoms: torch.Tensor) -> None:
    """Dimension ``dim`` of parameter ``p`` (if it is one) holds channels ``atoms``."""
    if isinstance(p, torch.Tensor) and st.owned(p):
        st.join(st.wdim(p, dim), atoms)


def is_weight(st: State, w: Any) -> bool:
    """``w`` is a module parameter used as a weight (not already used as data), or a weight
    computed from one index for index (:attr:`State.derived`: a weight norm)."""
    if isinstance(w, torch.Tensor) and id(w) in st.derived:
        w = st.derived[id(w)][0]
    return isinstance(w, torch.Tensor) and st.owned(w) and id(w) not in st.data


def refuse_non_parameter(st: State, call: Call, w: Any) -> bool:
    if is_weight(st, w):
        return False
    st.refuse(call, "weight is not a module parameter")
    return True


class Linear(Rule):
    """``F.linear(x, W, b)``: input channels are W's columns, output channels its rows."""

    ops = ("linear",)
    examples = (Example(lambda: mlp_around(torch.relu), VEC),)

    def apply(self, call: Call, st: State) -> None:
        x, w, b = call.args[0], arg(call, 1, "weight"), arg(call, 2, "bias")
        if refuse_non_parameter(st, call, w):
            return
        consume(st, call, st.small(x), st.wdim(w, 1), -1)
        rows = st.wdim(w, 0)
        bind(st, b, 0, rows)
        st.set(call.out, rows)


def weight_product(call: Call, st: State, x: Any, w: torch.Tensor, b: Any) -> None:
    """``x @ w`` with ``w`` a parameter stored ``[in, out]`` (Hugging Face ``Conv1D``)."""
    consume(st, call, st.small(x), st.wdim(w, 0), -1)
    cols = st.wdim(w, 1)
    bind(st, b, 0, cols)
    st.set(call.out, cols)


class ActivationProduct(Rule):
    """Products of two activations (attention scores, einsum): the contracted channels are
    multiplied together, so they stay. Every product's output is noted (tracked inputs or not):
    a channel combined with it along a dimension (a per-head scale on attention scores) stays by
    design, not for want of a rule."""

    untracked = True

    ops = (
        "bmm", "baddbmm", "einsum", "addbmm", "outer", "dot",
        "inner", "kron",
    )  # fmt: skip
    examples = (
        Example(
            lambda: mlp_around(lambda h: torch.einsum("bi,bj->bij", h, h).sum(2)),
            VEC,
            shrinks=False,
        ),
    )

    def apply(self, call: Call, st: State) -> None:
        st.refuse(call, "multiplies activations along their channels")
        st.products.update(id(t) for t in tensors_of(call.out))


PRODUCT = ActivationProduct()


class MatMul(Rule):
    """``x @ W`` with a 2-D parameter ``W`` is a weight op; between activations, a product."""

    ops = ("matmul", "mm", "__matmul__")
    examples = (Example(_MatMulHead, VEC), Example(_TransposedLinears, VEC))
    untracked = True  # a product of untracked activations is still noted (see ActivationProduct)

    def apply(self, call: Call, st: State) -> None:
        ins = tensors_of((call.args, call.kwargs))
        if len(ins) == 2 and id(ins[1]) in st.transposed:  # x @ W.T: a linear layer
            w = st.transposed[id(ins[1])]
            consume(st, call, st.small(ins[0]), st.wdim(w, 1), -1)
            st.set(call.out, st.wdim(w, 0))
        elif len(ins) == 2 and is_weight(st, ins[1]) and ins[1].dim() == 2:
            weight_product(call, st, ins[0], ins[1], None)
        else:
            PRODUCT.apply(call, st)


class AddMM(Rule):
    """``torch.addmm(b, x, W)`` (Hugging Face ``Conv1D``)."""

    ops = ("addmm",)
    examples = (Example(hf_conv1d, VEC),)

    def apply(self, call: Call, st: State) -> None:
        b, x, w = call.args[0], call.args[1], call.args[2]
        if is_weight(st, w) and w.dim() == 2:
            weight_product(call, st, x, w, b)
        else:
            PRODUCT.apply(call, st)


register("linear", Linear())
register("matmul", MatMul())
register("addmm", AddMM())
register("activation-product", PRODUCT)
