"""Channel propagation: what each recorded torch call does to channel identity.

Every tensor of the trace gets an *atom tensor*: an int64 tensor of its shape whose entry is the
id of the channel that element belongs to (``-1``: no tracked channel). Parameters consumed by
weight ops (linear, conv, embedding, norms) get one atom list per dimension; other parameters and
buffers get one atom per element. A rule links atoms that must be removed together (``join``) and
marks atoms whose removal would not be exact (``block``) with the call that forbids it.

Rules are looked up by the function's ``__name__`` (``linear``, ``view``, ``add``, ...), so
``torch.add``, ``Tensor.add`` and ``Tensor.add_`` share one rule. A call with no rule that touches a
tracked channel blocks those channels: unknown ops never produce a silently wrong group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .graph import Call, Graph, flatten

Rule = Callable[[Call, "State"], None]
RULES: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    def add(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn

    return add


class State:
    """Atoms of every tensor seen so far, plus the joins and blocks recorded by the rules."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.count = 0
        self.edges: list[torch.Tensor] = []  # [2, E] pairs of atoms to merge
        self.blocks: list[tuple[torch.Tensor, str]] = []
        self.act: dict[int, torch.Tensor] = {}
        #: (id(param), dim) -> atoms [size] of a weight dimension
        self.wdims: dict[tuple[int, int], torch.Tensor] = {}
        #: id(param) -> element atoms (shape of the parameter) for parameters used as data
        self.data: dict[int, torch.Tensor] = {}
        #: id(param) -> the parameter tensor, for everything in wdims and data
        self.params: dict[int, torch.Tensor] = {}
        #: params passed to calls without a rule: every atom on them is blocked at the end
        self.frozen: dict[int, str] = {}
        #: channel dims cut into pieces at positions fixed by the code: (pieces, call); checked
        #: once the groups are known (see check_cuts)
        self.cuts: list[tuple[list[torch.Tensor], Call]] = []

    # -- atoms -----------------------------------------------------------------------------------
    def fresh(self, n: int) -> torch.Tensor:
        out = torch.arange(self.count, self.count + n, dtype=torch.long)
        self.count += n
        return out

    def owned(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self.graph.owners

    def small(self, t: Any) -> torch.Tensor | None:
        """The stored atoms of ``t``: same number of dimensions, size 1 along every dimension on
        which they do not change. Parameters and buffers get element atoms on first use."""
        if not isinstance(t, torch.Tensor):
            return None
        a = self.act.get(id(t))
        if a is None and self.owned(t):
            a = self.fresh(t.numel()).view(t.shape)
            self.data[id(t)] = a
            self.params[id(t)] = t
            self.act[id(t)] = a
        return a

    def atoms(self, t: Any) -> torch.Tensor | None:
        """The atoms of ``t`` at its full shape (a broadcast view: free)."""
        a = self.small(t)
        return a.expand(t.shape) if a is not None else None

    def tracked(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and (id(t) in self.act or self.owned(t))

    def set(self, t: Any, atoms: torch.Tensor | None) -> None:
        if not isinstance(t, torch.Tensor):
            return
        if atoms is not None and atoms.dim() < t.dim():
            atoms = atoms.view((1,) * (t.dim() - atoms.dim()) + tuple(atoms.shape))
        if (
            atoms is None
            or atoms.dim() != t.dim()
            or any(a not in (1, n) for a, n in zip(atoms.shape, t.shape, strict=True))
        ):
            self.act.pop(id(t), None)
        else:
            self.act[id(t)] = compress(atoms)

    def wdim(self, p: torch.Tensor, dim: int) -> torch.Tensor:
        """Atoms of dimension ``dim`` of weight ``p`` (created once, shared by every use)."""
        key = (id(p), dim)
        if key not in self.wdims:
            self.wdims[key] = self.fresh(p.shape[dim])
            self.params[id(p)] = p
        return self.wdims[key]

    # -- links -----------------------------------------------------------------------------------
    def join(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Merge ``a`` and ``b`` elementwise (same shape) where both are tracked."""
        a, b = compact(*torch.broadcast_tensors(a, b))
        both = (a >= 0) & (b >= 0) & (a != b)
        if both.any():
            keys = torch.unique((a[both] << 32) | b[both])  # pairs as one int64: fast dedup
            self.edges.append(torch.stack([keys >> 32, keys & 0xFFFFFFFF]))

    def block(self, atoms: torch.Tensor | None, call: Call | None, why: str) -> None:
        if atoms is None:
            return
        atoms = compact(atoms)[0]
        live = atoms[atoms >= 0]
        if live.numel():
            where = f" ({call.where()})" if call is not None else ""
            self.blocks.append((torch.unique(live), f"{why}{where}"))

    def block_inputs(self, call: Call, why: str) -> None:
        for t in tensors_of((call.args, call.kwargs)):
            self.block(self.act.get(id(t)), call, why)
            if self.owned(t):
                self.frozen.setdefault(id(t), f"{why} ({call.where()})")


def compress(a: torch.Tensor) -> torch.Tensor:
    """``a`` with size 1 along every dimension on which its values do not change."""
    for d in range(a.dim()):
        if a.shape[d] > 1 and (a.stride(d) == 0 or bool((a == a.narrow(d, 0, 1)).all())):
            a = a.narrow(d, 0, 1)
    return a


def compact(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the broadcast (stride 0) dimensions that all of ``ts`` share: same pairs, less work."""
    dims = [d for d in range(ts[0].dim()) if all(t.stride(d) == 0 for t in ts)]
    out = []
    for t in ts:
        for d in dims:
            t = t.narrow(d, 0, 1)
        out.append(t)
    return tuple(out)


def tensors_of(value: Any) -> list[torch.Tensor]:
    return [t for t in flatten(value) if isinstance(t, torch.Tensor)]


def varying(a: torch.Tensor) -> list[int]:
    """Dimensions along which the atoms of ``a`` change."""
    return [d for d, n in enumerate(compress(a).shape) if n > 1]


def arg(call: Call, pos: int, name: str, default: Any = None) -> Any:
    if len(call.args) > pos:
        return call.args[pos]
    return call.kwargs.get(name, default)


def _out(call: Call) -> torch.Tensor | None:
    out = call.out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    return out if isinstance(out, torch.Tensor) else None


def propagate(graph: Graph) -> State:
    """Run every rule over the trace; unknown calls on tracked channels block them."""
    st = State(graph)
    for call in graph.calls:
        ins = tensors_of((call.args, call.kwargs))
        if not any(st.tracked(t) for t in ins):
            continue
        fn = RULES.get(call.name) or RULES.get(call.name.rstrip("_"))
        if fn is None:
            st.block_inputs(call, "no channel rule for this op")
            for t in tensors_of(call.out):
                st.set(t, None)
            continue
        fn(call, st)
    for t in graph.tensors(graph.outputs):
        st.block(st.act.get(id(t)), None, "part of the model's output")
    for pid, why in st.frozen.items():
        st.block(st.data.get(pid), None, why)
        for (qid, _), a in st.wdims.items():
            if qid == pid:
                st.block(a, None, why)
    return st


# -- elementwise -------------------------------------------------------------------------------
@rule(
    "add",
    "sub",
    "mul",
    "div",
    "true_divide",
    "rsub",
    "neg",
    "relu",
    "relu6",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "leaky_relu",
    "elu",
    "selu",
    "mish",
    "softplus",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "pow",
    "sqrt",
    "rsqrt",
    "exp",
    "log",
    "abs",
    "clamp",
    "clip",
    "sin",
    "cos",
    "erf",
    "masked_fill",
    "where",
    "square",
    "reciprocal",
    "fill",
    "zero",
    "lerp",
    "addcmul",
    "addcdiv",
    "maximum",
    "minimum",
    "sign",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "logical_not",
    "floor_divide",
    "remainder",
    "fmod",
    "__and__",
    "__or__",
    "__mul__",
    "__add__",
    "__sub__",
    "__truediv__",
    "__rmul__",
    "__radd__",
    "__rsub__",
    "__rtruediv__",
    "__neg__",
    "__pow__",
    "__rpow__",
    "__iadd__",
    "__imul__",
    "__isub__",
    "__itruediv__",
    "__eq__",
    "__ne__",
    "__lt__",
    "__gt__",
    "__le__",
    "__ge__",
    "__invert__",
    "nan_to_num",
    "tril",
    "triu",
    "alpha_dropout",
    "feature_alpha_dropout",
    "celu",
    "logsigmoid",
    "tanhshrink",
    "softsign",
    "threshold",
    "rrelu",
    "copysign",
    "hypot",
    "atan2",
    "expm1",
    "log1p",
)
def elementwise(call: Call, st: State) -> None:
    out = _out(call)
    if out is None:
        return
    shape = out.shape
    ins = tensors_of((call.args, call.kwargs))
    known, unknown, shared = [], [], []
    for t in ins:
        a = st.small(t)
        if a is not None and a.dim() < len(shape):
            a = a.view((1,) * (len(shape) - a.dim()) + tuple(a.shape))
        if a is not None and id(t) in st.data:
            shared.append((t, a))  # a parameter used as data: decided below
        else:
            (known if a is not None else unknown).append((t, a))
    vary = {d for _, a in known for d in varying(a)}
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
        torch.broadcast_shapes(smalls[0].shape, shape)
    except RuntimeError:
        st.block_inputs(call, "operands do not broadcast to the output")
        st.set(out, None)
        return
    res = smalls[0]
    for b in smalls[1:]:
        st.join(res, b)
        res = torch.where(res >= 0, res, b)
    vary = varying(res)
    for t, _ in unknown:
        lead = (1,) * (len(shape) - t.dim()) + tuple(t.shape)
        if any(lead[d] > 1 for d in vary):
            st.block(res, call, "combined with a tensor of unknown origin along a channel")
    st.set(out, res)


@rule("copy_")
def copy_(call: Call, st: State) -> None:
    dst, src = call.args[0], call.args[1]
    a = st.atoms(src)
    st.set(dst, torch.broadcast_to(a, dst.shape) if a is not None else None)


@rule("__setitem__")
def setitem(call: Call, st: State) -> None:
    dst, idx, val = call.args
    a = st.atoms(dst)
    v = st.atoms(val) if isinstance(val, torch.Tensor) else None
    base = a.clone() if a is not None else torch.full(dst.shape, -1, dtype=torch.long)
    try:
        base[idx] = v if v is not None else -1
    except (RuntimeError, IndexError):
        st.block_inputs(call, "unsupported indexed assignment")
        st.set(dst, None)
        return
    st.set(dst, base)


@rule(
    "to",
    "type",
    "float",
    "half",
    "bfloat16",
    "double",
    "type_as",
    "detach",
    "contiguous",
    "clone",
    "cpu",
    "cuda",
    "requires_grad_",
    "__deepcopy__",
)
def identity(call: Call, st: State) -> None:
    st.set(call.out, st.small(call.args[0]))


# -- data movement: replay the call on the atoms ---------------------------------------------
def _replay(call: Call, st: State, data_args: tuple[int, ...] = (0,), lists: bool = False) -> None:
    args = list(call.args)
    kwargs = dict(call.kwargs)
    for i in data_args:
        if i >= len(args):
            continue
        if lists:
            args[i] = [_atoms_or_blank(st, t) for t in args[i]]
        else:
            args[i] = _atoms_or_blank(st, args[i])
    if call.name == "pad":
        kwargs["value"] = -1
        if len(args) > 3:
            args[3] = -1
        mode = arg(call, 2, "mode", "constant")
        if mode != "constant":
            _reduce_dims(call, st, list(range(2, call.args[0].dim())))
            return
    func = _VIEW_AS_RESHAPE.get(call.name, call.func)
    try:
        res = func(*args, **kwargs)
    except (RuntimeError, TypeError, IndexError, ValueError):
        st.block_inputs(call, "could not replay this op on channel ids")
        for t in tensors_of(call.out):
            st.set(t, None)
        return
    outs, got = tensors_of(call.out), tensors_of(res)
    if len(outs) != len(got):
        st.block_inputs(call, "could not replay this op on channel ids")
        return
    src = st.act.get(id(call.args[0])) if isinstance(call.args[0], torch.Tensor) else None
    before = len(varying(src)) if src is not None else 0
    if call.name in _SLICERS and src is not None and id(call.args[0]) not in st.data:
        _record_cut(st, call, src, got)  # (parameters used as data: see analyse's separability)
    for t, a in zip(outs, got, strict=True):
        if call.name in _RESHAPES and src is not None and len(varying(a)) > before:
            st.block(src, call, "a channel dimension is split into several (reshape into heads)")
            st.set(t, None)
            continue
        st.set(t, a)


_SLICERS = {
    "split",
    "split_with_sizes",
    "chunk",
    "narrow",
    "__getitem__",
    "tensor_split",
    "unbind",
    "select",
    "index_select",
    "gather",
}


def _record_cut(st: State, call: Call, src: torch.Tensor, pieces: list[torch.Tensor]) -> None:
    """A slicing op along a channel dimension cuts it at positions the code fixes (literal sizes,
    or shapes): removing channels keeps the cut right only if every piece loses the same
    positions. Record the pieces' channel ids for :func:`check_cuts`."""
    full = src.expand(call.args[0].shape)
    for d in varying(src):
        cut = [a for a in pieces if a.dim() != full.dim() or a.shape[d] != full.shape[d]]
        if not cut:
            continue
        if any(a.dim() != full.dim() for a in cut):  # select / unbind drop the dimension
            st.block(src, call, "picks single channels at fixed positions")
            return
        st.cuts.append(
            (
                [compress(a).movedim(d, 0).reshape(a.shape[d], -1)[:, 0] for a in cut]
                + ([] if len(cut) > 1 else [full.movedim(d, 0).reshape(full.shape[d], -1)[:, 0]]),
                call,
            )
        )
        return


def check_cuts(st: State, lab: torch.Tensor) -> None:
    """Block channels cut at fixed positions unless the pieces are equal and position ``j`` of
    every piece belongs to one group (``chunk`` into halves that are used together)."""
    for pieces, call in st.cuts:
        ok = len(pieces) > 1 and len({len(p) for p in pieces}) == 1
        if ok:
            labels = torch.stack([lab[p.clamp_min(0)] for p in pieces])  # [pieces, width]
            ok = bool((labels == labels[:1]).all()) and bool((torch.stack(pieces) >= 0).all())
        if not ok:
            for p in pieces:
                st.block(p, call, "sliced at positions fixed by the code")


def _atoms_or_blank(st: State, t: Any) -> Any:
    if not isinstance(t, torch.Tensor):
        return t
    a = st.atoms(t)
    return a if a is not None else torch.full(t.shape, -1, dtype=torch.long)


def _view(a: torch.Tensor, *shape: Any, **kw: Any) -> torch.Tensor:
    if shape and isinstance(shape[0], torch.dtype):
        return a
    return a.reshape(*shape, **kw)


_VIEW_AS_RESHAPE: dict[str, Callable] = {
    "view": _view,
    "view_as": lambda a, other: a.reshape(other.shape),
}
_RESHAPES = {"view", "reshape", "view_as", "reshape_as", "unflatten", "flatten"}


@rule(
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "permute",
    "transpose",
    "t",
    "squeeze",
    "unsqueeze",
    "expand",
    "__getitem__",
    "split",
    "chunk",
    "unbind",
    "narrow",
    "select",
    "movedim",
    "moveaxis",
    "repeat",
    "repeat_interleave",
    "flip",
    "roll",
    "tile",
    "swapaxes",
    "swapdims",
    "view_as",
    "reshape_as",
    "expand_as",
    "index_select",
    "gather",
    "split_with_sizes",
    "tensor_split",
    "take_along_dim",
    "pad",
)
def replay(call: Call, st: State) -> None:
    _replay(call, st)


@rule("cat", "concat", "concatenate", "stack", "hstack", "vstack")
def replay_list(call: Call, st: State) -> None:
    _replay(call, st, lists=True)


# -- reductions --------------------------------------------------------------------------------
def _dims(call: Call, ndim: int, pos: int = 1) -> list[int]:
    dim = arg(call, pos, "dim")
    if dim is None:
        return list(range(ndim))
    if isinstance(dim, int):
        dim = [dim]
    return sorted({d % ndim for d in dim}) if ndim else []


def _reduce_dims(call: Call, st: State, dims: list[int]) -> None:
    x = call.args[0]
    a = st.small(x)
    outs = tensors_of(call.out)
    if a is None or not outs:
        for t in outs:
            st.set(t, None)
        return
    if set(dims) & set(varying(a)):
        st.block(a, call, "reduces or normalizes over a channel dimension")
        for t in outs:
            st.set(t, None)
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


@rule(
    "sum",
    "mean",
    "amax",
    "amin",
    "max",
    "min",
    "var",
    "std",
    "norm",
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
    "linalg_vector_norm",
)
def reduction(call: Call, st: State) -> None:
    x = call.args[0]
    if len(tensors_of(call.args[:2])) == 2 and call.name in ("max", "min"):
        return elementwise(call, st)  # torch.max(a, b)
    pos = 2 if call.name in ("norm", "linalg_vector_norm") else 1
    _reduce_dims(call, st, _dims(call, x.dim(), pos))


@rule("softmax", "log_softmax", "cumsum", "cumprod", "sort", "argsort", "topk", "cummax")
def along_dim(call: Call, st: State) -> None:
    x = call.args[0]
    dim = arg(call, 1, "dim", -1)
    a = st.small(x)
    if a is not None and dim is not None and (dim % x.dim()) in varying(a):
        st.block(a, call, "mixes values along a channel dimension")
        a = None
    for t in tensors_of(call.out):
        st.set(t, a if a is not None and t.shape == x.shape and t.is_floating_point() else None)


@rule(
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "interpolate",
    "upsample",
    "max_pool2d_with_indices",
    "lp_pool2d",
)
def pool(call: Call, st: State) -> None:
    _reduce_dims(call, st, list(range(2, call.args[0].dim())))


# -- weight ops ----------------------------------------------------------------------------------
def _consume(
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


def _bind(st: State, p: Any, dim: int, atoms: torch.Tensor) -> None:
    if isinstance(p, torch.Tensor) and st.owned(p):
        st.join(st.wdim(p, dim), atoms)


def _not_param(st: State, call: Call, w: Any) -> bool:
    if isinstance(w, torch.Tensor) and st.owned(w) and id(w) not in st.data:
        return False
    st.block_inputs(call, "weight is not a module parameter")
    for t in tensors_of(call.out):
        st.set(t, None)
    return True


@rule("linear")
def linear(call: Call, st: State) -> None:
    x, w, b = call.args[0], arg(call, 1, "weight"), arg(call, 2, "bias")
    if _not_param(st, call, w):
        return
    _consume(st, call, st.small(x), st.wdim(w, 1), -1)
    rows = st.wdim(w, 0)
    _bind(st, b, 0, rows)
    st.set(call.out, rows)


def _matmul_weight(call: Call, st: State, x: Any, w: torch.Tensor, b: Any) -> None:
    """``x @ w`` with ``w`` a parameter stored ``[in, out]`` (Hugging Face ``Conv1D``)."""
    _consume(st, call, st.small(x), st.wdim(w, 0), -1)
    cols = st.wdim(w, 1)
    _bind(st, b, 0, cols)
    st.set(call.out, cols)


@rule("addmm")
def addmm(call: Call, st: State) -> None:
    b, x, w = call.args[0], call.args[1], call.args[2]
    if st.owned(w) and w.dim() == 2 and id(w) not in st.data:
        return _matmul_weight(call, st, x, w, b)
    matmul(call, st)


@rule(
    "matmul",
    "mm",
    "bmm",
    "baddbmm",
    "einsum",
    "scaled_dot_product_attention",
    "addbmm",
    "__matmul__",
    "outer",
    "dot",
    "inner",
    "kron",
)
def matmul(call: Call, st: State) -> None:
    ins = tensors_of((call.args, call.kwargs))
    if call.name in ("matmul", "mm", "__matmul__") and len(ins) == 2:
        x, w = ins
        if st.owned(w) and w.dim() == 2 and id(w) not in st.data:
            return _matmul_weight(call, st, x, w, None)
    st.block_inputs(call, "multiplies activations along their channels")
    for t in tensors_of(call.out):
        st.set(t, None)


@rule("conv1d", "conv2d", "conv3d")
def conv(call: Call, st: State) -> None:
    x, w, b = call.args[0], arg(call, 1, "weight"), arg(call, 2, "bias")
    groups = arg(call, 6, "groups", 1)
    if _not_param(st, call, w):
        return
    cin, cout = x.shape[1], w.shape[0]
    rows = st.wdim(w, 0)
    a = st.small(x)
    if groups == 1:
        _consume(st, call, a, st.wdim(w, 1), 1)
    elif groups == cin:  # depthwise: output o reads input o // multiplier
        per = cout // cin
        src = torch.arange(cout) // per
        links = st.fresh(cin)
        _consume(st, call, a, links, 1)
        st.join(rows, links[src])
    else:  # grouped: a local index is removed from every group, so groups stay equal
        wo = cout // groups
        cols = st.wdim(w, 1)
        links = cols.repeat(groups)  # input channel g * (cin // groups) + j <- column j
        _consume(st, call, a, links, 1)
        st.join(rows.view(groups, wo), rows[:wo].expand(groups, wo))
    _bind(st, b, 0, rows)
    st.set(call.out, rows.view(1, cout, *([1] * (call.out.dim() - 2))))


@rule("embedding")
def embedding(call: Call, st: State) -> None:
    idx, w = call.args[0], arg(call, 1, "weight")
    if _not_param(st, call, w):
        return
    st.set(call.out, st.wdim(w, 1))
    del idx


def _per_channel(call: Call, st: State, params: list[Any]) -> None:
    """Ops that treat each channel (dim 1) separately: batch norm, instance norm."""
    x = call.args[0]
    c = st.fresh(x.shape[1])
    _consume(st, call, st.small(x), c, 1)
    for p in params:
        _bind(st, p, 0, c)
    st.set(call.out, c.view(1, -1, *([1] * (call.out.dim() - 2))))


@rule("batch_norm", "instance_norm")
def batch_norm(call: Call, st: State) -> None:
    """Batch and instance norm: statistics per channel, so channels stay independent."""
    params = [
        arg(call, i, n)
        for i, n in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
    ]
    _per_channel(call, st, params)


@rule("group_norm")
def group_norm(call: Call, st: State) -> None:
    x, groups = call.args[0], arg(call, 1, "num_groups")
    params = [arg(call, 2, "weight"), arg(call, 3, "bias")]
    if groups == x.shape[1]:
        return _per_channel(call, st, params)
    c = st.fresh(x.shape[1])
    _consume(st, call, st.small(x), c, 1)
    for p in params:
        _bind(st, p, 0, c)
    st.block(c, call, f"group_norm with {groups} groups mixes channels in its statistics")
    st.set(call.out, c.view(1, -1, *([1] * (call.out.dim() - 2))))


@rule("layer_norm", "rms_norm")
def layer_norm(call: Call, st: State) -> None:
    x, ns = call.args[0], arg(call, 1, "normalized_shape")
    params = [arg(call, 2, "weight"), arg(call, 3, "bias")]
    k = len(ns) if isinstance(ns, (tuple, list, torch.Size)) else 1
    size = math.prod(x.shape[-k:])
    c = st.fresh(size)
    a = st.small(x)
    if a is not None:
        a = a.expand(*a.shape[:-k], *x.shape[-k:]).reshape(*a.shape[:-k], size)
    _consume(st, call, a, c, -1)
    for p in params:
        if isinstance(p, torch.Tensor) and st.owned(p):
            st.join(st.atoms(p).reshape(-1), c) if p.dim() > 1 else _bind(st, p, 0, c)
    st.block(c, call, f"{call.name} normalizes over the channel dimension")
    st.set(call.out, c.view(*x.shape[-k:]))


@rule("multi_head_attention_forward", "_native_multi_head_attention")
def torch_mha(call: Call, st: State) -> None:
    """``nn.MultiheadAttention`` derives its head size from its input width: neither can change."""
    st.block_inputs(call, "nn.MultiheadAttention ties its width to its heads")
    for t in tensors_of(call.out):
        st.set(t, None)


@rule("rms_norm_module")
def rms_norm_module(call: Call, st: State) -> None:
    """An RMS norm module: channels stay separate up to one shared scale, which shrink folds
    back exactly (weights times sqrt(D/D'), eps times D/D'; see shrink.rescale_rms_norms)."""
    x, w = call.args
    c = st.wdim(w, 0)
    _consume(st, call, st.small(x), c, -1)
    st.set(call.out, c)
