"""Reductions, pooling and ops along one dimension: exact only away from the channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..graph import Call
from ..propagate import Example, Rule, State, arg, register, tensors_of, varying
from ._examples import IMAGE, VEC, cnn_around, mlp_around
from .elementwise import ELEMENTWISE


def _dims(call: Call, ndim: int, pos: int) -> list[int]:
    dim = arg(call, pos, "dim")
    if dim is None:
        return list(range(ndim))
    if isinstance(dim, int):
        dim = [dim]
    return sorted({d % ndim for d in dim}) if ndim else []


def reduce_dims(call: Call, st: State, dims: list[int]) -> None:
    """The output keeps the channels of every dimension not in ``dims``; reducing a channel
    dimension keeps its channels."""
    x = call.args[0]
    a = st.small(x)
    outs = tensors_of(call.out)
    if a is None or not outs:
        st.clear(call)
        return
    if set(dims) & set(varying(a)):
        st.block(a, call, "reduces or normalizes over a channel dimension")
        st.clear(call)
        return
    r = a
    for d in dims:
        r = r.narrow(d, 0, 1)
    out = outs[0]
    if r.dim() != out.dim():
        r = r.squeeze(tuple(dims)) if dims else r
    if r.dim() != out.dim():
        st.block(a, call, "could not map channels through this reduction")
        r = None
    st.set(out, r)
    for t in outs[1:]:
        st.set(t, None)


class Reduction(Rule):
    """``x.sum(dim)`` and kin; ``dim_arg`` is the position of the ``dim`` argument."""

    def __init__(self, ops: tuple[str, ...], examples: tuple[Example, ...], dim_arg: int = 1):
        self.ops, self.examples, self.dim_arg = ops, examples, dim_arg

    def apply(self, call: Call, st: State) -> None:
        x = call.args[0]
        reduce_dims(call, st, _dims(call, x.dim(), self.dim_arg))


class Extremum(Reduction):
    """``max``/``min``: a reduction, or elementwise when given two tensors (``torch.max(a, b)``)."""

    def apply(self, call: Call, st: State) -> None:
        if len(tensors_of(call.args[:2])) == 2:
            ELEMENTWISE.apply(call, st)
        else:
            super().apply(call, st)


class AlongDim(Rule):
    """Softmax, cumulative ops and sorting mix values along ``dim``: fine unless it holds
    channels. Sorting indices (integer outputs) carry no channel."""

    ops = ("softmax", "log_softmax", "cumsum", "cumprod", "sort", "argsort", "topk", "cummax")
    examples = (Example(lambda: mlp_around(lambda h: h.unsqueeze(0).softmax(0)[0]), VEC),)

    def apply(self, call: Call, st: State) -> None:
        x = call.args[0]
        dim = arg(call, 1, "dim", -1)
        a = st.small(x)
        if a is not None and dim is not None and (dim % x.dim()) in varying(a):
            st.block(a, call, "mixes values along a channel dimension")
            a = None
        for t in tensors_of(call.out):
            st.set(t, a if a is not None and t.shape == x.shape and t.is_floating_point() else None)


class Pool(Rule):
    """Pooling and resampling reduce the spatial dimensions (2 onwards) only."""

    ops = (
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "avg_pool1d",
        "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate",
        "upsample", "max_pool2d_with_indices", "lp_pool2d",
    )  # fmt: skip
    examples = (
        Example(
            lambda: cnn_around(
                lambda h: F.interpolate(F.max_pool2d(h, 2), scale_factor=2.0),
            ),
            IMAGE,
        ),
    )

    def apply(self, call: Call, st: State) -> None:
        reduce_dims(call, st, list(range(2, call.args[0].dim())))


register(
    "reduction",
    Reduction(
        (
            "sum",
            "mean",
            "amax",
            "amin",
            "var",
            "std",
            "logsumexp",
            "prod",
            "argmax",
            "argmin",
            "all",
            "any",
            "nansum",
            "nanmean",
            "var_mean",
            "std_mean",
            "median",
            "count_nonzero",
        ),
        (Example(lambda: cnn_around(lambda h: h.mean((2, 3)), torch.nn.Linear(16, 4)), IMAGE),),
    ),
)
register(
    "norm-reduction",
    Reduction(
        ("norm", "linalg_vector_norm"),
        (Example(lambda: cnn_around(lambda h: h.norm(dim=(2, 3)), torch.nn.Linear(16, 4)), IMAGE),),
        dim_arg=2,
    ),
)
register(
    "extremum",
    Extremum(
        ("max", "min"),
        (
            Example(lambda: mlp_around(lambda h: torch.max(h, h * 0.5)), VEC),
            Example(
                lambda: cnn_around(lambda h: h.amax(3).max(2).values, torch.nn.Linear(16, 4)), IMAGE
            ),
        ),
    ),
)
register("along-dim", AlongDim())
register("pool", Pool())
