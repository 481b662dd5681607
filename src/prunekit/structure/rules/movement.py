"""Data movement (views, slices, concatenation, padding): replay the call on the channel ids.

Each family declares how its replay is checked: reshapes may split a channel dimension into
several (refused: heads are pruned by the head granularity), slices cut a channel dimension at
positions fixed by the code (checked once the groups are known; a pick of single channels whose
value nothing reads is harmless; a table read by rows keeps its columns as channels),
concatenations take a list.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..graph import Call, Graph
from ..propagate import Example, Rule, State, arg, compress, register, tensors_of, varying
from ._examples import IMAGE, VEC, cnn_around, mlp_around


def _view(a: torch.Tensor, *shape: Any, **kw: Any) -> torch.Tensor:
    if shape and isinstance(shape[0], torch.dtype):
        return a
    return a.reshape(*shape, **kw)


def _atoms_or_blank(st: State, t: Any) -> Any:
    if not isinstance(t, torch.Tensor):
        return t
    a = st.atoms(t)
    return a if a is not None else torch.full(t.shape, -1, dtype=torch.long)


class Replay(Rule):
    """Run the op itself on the atoms of its first argument (or list of tensors)."""

    def __init__(
        self,
        ops: tuple[str, ...],
        examples: tuple[Example, ...],
        *,
        lists: bool = False,
        cuts: bool = False,
        reshapes: bool = False,
        substitute: dict[str, Callable[..., torch.Tensor]] | None = None,
    ) -> None:
        self.ops, self.examples = ops, examples
        #: the first argument is a list of tensors (cat, stack)
        self.lists = lists
        #: the op cuts a dimension at positions fixed by the code (recorded for check_cuts)
        self.cuts = cuts
        #: the op may split one channel dimension into several (refused)
        self.reshapes = reshapes
        #: ops replayed by another function on atoms (``view`` would refuse non-contiguous ids)
        self.substitute = substitute or {}

    def replay_args(self, call: Call, st: State) -> tuple[list[Any], dict[str, Any]]:
        args, kwargs = list(call.args), dict(call.kwargs)
        if args:
            if self.lists:
                args[0] = [_atoms_or_blank(st, t) for t in args[0]]
            else:
                args[0] = _atoms_or_blank(st, args[0])
        return args, kwargs

    def apply(self, call: Call, st: State) -> None:
        if self.cuts and not st.heads:
            _rows_of_table(call, st)
        args, kwargs = self.replay_args(call, st)
        func = self.substitute.get(call.name, call.func)
        try:
            res = func(*args, **kwargs)
        except (RuntimeError, TypeError, IndexError, ValueError):
            st.refuse(call, "could not replay this op on channel ids")
            return
        outs, got = tensors_of(call.out), tensors_of(res)
        if len(outs) != len(got):
            st.block_inputs(call, "could not replay this op on channel ids")
            return
        first = call.args[0]
        src = st.act.get(id(first)) if isinstance(first, torch.Tensor) else None
        before = len(varying(src)) if src is not None else 0
        if self.cuts and not st.heads and src is not None and id(first) not in st.data:
            _record_cut(st, call, src, got)  # (parameters used as data: see analyse's separability)
        for t, a in zip(outs, got, strict=True):
            if self.reshapes and not st.heads and src is not None and len(varying(a)) > before:
                st.block(
                    src, call, "a channel dimension is split into several (reshape into heads)"
                )
                st.set(t, None)
                continue
            st.set(t, a)


class Layout(Replay):
    """Permutations and broadcasts. Transposing a 2-D weight (``W.T``) makes no channel ids: the
    view is remembered, so that ``x @ W.T`` is read as the linear layer it is."""

    def apply(self, call: Call, st: State) -> None:
        w = call.args[0]
        if (
            call.name in ("t", "T", "mT", "transpose")
            and isinstance(w, torch.Tensor)
            and w.dim() == 2
            and st.owned(w)
            and id(w) not in st.data
        ):
            st.transposed[id(call.out)] = w
            return
        super().apply(call, st)


class Pad(Replay):
    """Padding along dimensions that hold no channel keeps every channel (a padded border of
    channel ``c`` belongs to ``c``); constant padding of a channel dimension adds positions that
    belong to no channel (ids ``-1``); other modes there read channels at fixed positions."""

    def replay_args(self, call: Call, st: State) -> tuple[list[Any], dict[str, Any]]:
        args, kwargs = super().replay_args(call, st)
        kwargs["value"] = -1
        if len(args) > 3:
            args[3] = -1
        return args, kwargs

    def apply(self, call: Call, st: State) -> None:
        x, amounts = call.args[0], arg(call, 1, "pad")
        src = st.small(x)
        padded = {x.dim() - 1 - i // 2 for i, n in enumerate(amounts) if n}
        if src is not None and not padded & set(varying(src)):
            st.set(call.out, src)  # size 1 along every padded dimension: broadcasts
        elif arg(call, 2, "mode", "constant") == "constant":
            super().apply(call, st)
        else:
            st.refuse(call, "pads a channel dimension by reading other channels")


def _rows_of_table(call: Call, st: State) -> None:
    """A parameter read along its leading dimensions only (a position table read as
    ``weight[start:end]`` or ``weight[position_ids]``) holds channels along its last dimension,
    whatever rows a call reads, as an embedding table does: its columns get one id each. Found
    by replaying the call on column numbers; a first use only (a parameter seen before keeps the
    ids it has), a floating-point table only (not an index buffer), never a buffer the
    checkpoint does not hold."""
    w = call.args[0]
    if not isinstance(w, torch.Tensor) or w.dim() < 2 or not w.is_floating_point():
        return
    if id(w) in st.act or not st.owned(w):
        return
    _, module, attr = st.graph.owners[id(w)][0]
    if attr in module._non_persistent_buffers_set:
        return
    cols = torch.arange(w.shape[-1])
    try:
        got = tensors_of(call.func(cols.expand(w.shape), *call.args[1:], **call.kwargs))
    except (RuntimeError, TypeError, IndexError, ValueError):
        return
    if got and all(
        a.dim() and a.shape[-1] == len(cols) and torch.equal(a, cols.expand_as(a)) for a in got
    ):
        st.set(w, st.wdim(w, w.dim() - 1).view((1,) * (w.dim() - 1) + (-1,)))


def _record_cut(st: State, call: Call, src: torch.Tensor, pieces: list[torch.Tensor]) -> None:
    """A slicing op along a channel dimension cuts it at positions the code fixes (literal sizes,
    or shapes): removing channels keeps the cut right only if every piece loses the same
    positions. Record the pieces' channel ids for :func:`~..propagate.check_cuts`."""
    full = src.expand(call.args[0].shape)
    ids = torch.unique(src)
    for d in varying(src):
        cut = []
        for a in (p for p in pieces if p.numel()):
            if a.dim() == full.dim():
                if a.shape[d] != full.shape[d]:
                    cut.append(a)
            elif not torch.equal(torch.unique(compress(a)), ids):  # select / unbind
                if _values_read(st, call):
                    st.block(src, call, "picks single channels at fixed positions")
                return
        if not cut:
            continue
        st.cuts.append(
            (
                [compress(a).movedim(d, 0).reshape(a.shape[d], -1)[:, 0] for a in cut]
                + ([] if len(cut) > 1 else [full.movedim(d, 0).reshape(full.shape[d], -1)[:, 0]]),
                call,
            )
        )
        return


#: the graph last asked about, and the ids of every tensor its calls read or it returns
_READ: tuple[weakref.ref[Graph], set[int]] | None = None


def _values_read(st: State, call: Call) -> bool:
    """Some later call reads an output of ``call`` or the model returns one. A pick whose
    result only has its shape read (BART's ``embed_positions(x[:, :, -1])``) reads the same
    shape from any channel, so the pruned model gives the same result."""
    global _READ
    if _READ is None or _READ[0]() is not st.graph:
        ids = {id(t) for c in st.graph.calls for t in tensors_of((c.args, c.kwargs))}
        ids |= {id(t) for t in st.graph.tensors(st.graph.outputs)}
        _READ = (weakref.ref(st.graph), ids)
    return any(id(t) in _READ[1] for t in tensors_of(call.out))


def _glu(h: torch.Tensor) -> torch.Tensor:
    a, b = h.chunk(2, dim=-1)
    return torch.cat([a * torch.sigmoid(b)] * 2, dim=-1)


class _PositionTable(torch.nn.Module):
    """Whisper's decoder: a position table read as ``weight[start:end]``, added to the width."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)
        self.pos = torch.nn.Parameter(torch.randn(6, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(torch.relu(h + self.pos[: h.shape[0]]))


class _ShapeOfPick(torch.nn.Module):
    """BART's encoder: ``embed_positions(x[:, :, -1])`` reads only the pick's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)
        self.pos = torch.nn.Embedding(6, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        positions = torch.arange(h[:, -1].shape[0])
        return self.out(torch.relu(h + self.pos(positions)))


class _TwoBranches(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = torch.nn.Linear(8, 6), torch.nn.Linear(8, 10)
        self.out = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.left(x), self.right(x)], dim=-1).relu())


register(
    "reshape",
    Replay(
        ("view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"),
        (
            Example(
                lambda: mlp_around(lambda h: h.view(h.shape[0], 1, -1).reshape(h.shape[0], -1)), VEC
            ),
        ),
        reshapes=True,
        substitute={"view": _view, "view_as": lambda a, other: a.reshape(other.shape)},
    ),
)
register(
    "layout",
    Layout(
        (
            "permute",
            "transpose",
            "t",
            "T",
            "mT",
            "squeeze",
            "unsqueeze",
            "expand",
            "movedim",
            "moveaxis",
            "repeat",
            "repeat_interleave",
            "flip",
            "roll",
            "tile",
            "swapaxes",
            "swapdims",
            "expand_as",
            "broadcast_to",
            "take_along_dim",
        ),
        (
            Example(
                lambda: mlp_around(lambda h: h.unsqueeze(1).transpose(1, 2).flip(0).squeeze(2)),
                VEC,
            ),
        ),
    ),
)
register(
    "slice",
    Replay(
        (
            "__getitem__",
            "split",
            "chunk",
            "unbind",
            "narrow",
            "select",
            "index_select",
            "gather",
            "split_with_sizes",
            "tensor_split",
        ),
        (
            Example(lambda: mlp_around(_glu), VEC),
            Example(_PositionTable, VEC),
            Example(_ShapeOfPick, VEC),
        ),
        cuts=True,
    ),
)
register(
    "concat",
    Replay(
        ("cat", "concat", "concatenate", "stack", "hstack", "vstack"),
        (Example(_TwoBranches, VEC),),
        lists=True,
    ),
)
register(
    "pad",
    Pad(
        ("pad",),
        (
            Example(lambda: cnn_around(lambda h: F.pad(h, (1, 1, 1, 1))), IMAGE),
            Example(lambda: cnn_around(lambda h: F.pad(h, (1, 1, 1, 1), mode="reflect")), IMAGE),
        ),
    ),
)
