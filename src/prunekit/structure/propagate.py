"""The channel propagation engine: what each recorded torch call does to channel identity.

Every tensor of the trace gets an *atom tensor*: an int64 tensor of its shape whose entry is the
id of the channel that element belongs to (``-1``: no tracked channel). Parameters consumed by
weight ops (linear, conv, embedding, norms) get one atom list per dimension; other parameters and
buffers get one atom per element. A rule links atoms that must be removed together (``join``) and
marks atoms whose removal would not be exact (``block``) with the call that forbids it.

Rules live in the :mod:`.rules` package, one module per family, each registered in :data:`RULES`
and declaring the op names (a function's ``__name__``: ``linear``, ``view``, ``add``, ...) it
handles, so ``torch.add``, ``Tensor.add`` and ``Tensor.add_`` share one rule. A call with no rule
that touches a tracked channel blocks those channels, naming the op and the module: unknown ops
never produce a silently wrong group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..registry import Registry
from .graph import Call, Graph, flatten


@dataclass(frozen=True)
class Example:
    """A tiny model whose trace runs a rule: ``build()`` called on ``inputs()``.

    ``shrinks``: 50% channel pruning must remove parameters (False where the rule keeps the
    channels it sees, by design). The contract tests prune, shrink (verified) and check that.
    """

    build: Callable[[], nn.Module]
    inputs: Callable[[], Any]
    shrinks: bool = True


class Rule:
    """How a family of torch ops moves channel ids. Subclasses declare ``ops`` and ``apply``."""

    #: the op names (``func.__name__``, trailing ``_`` of in-place variants ignored) handled
    ops: tuple[str, ...] = ()
    examples: tuple[Example, ...] = ()
    #: also applied to calls none of whose inputs carries a channel id
    untracked: bool = False

    def apply(self, call: Call, st: State) -> None:
        raise NotImplementedError


#: structure rules by family name; :func:`rule_for` looks them up by op name
RULES: Registry[Rule] = Registry("structure rule")
_BY_OP: dict[str, Rule] = {}


def register(name: str, rule: Rule) -> Rule:
    """Register ``rule`` as family ``name``; an op claimed by two families raises."""
    for op in rule.ops:
        if op in _BY_OP:
            raise RuntimeError(f"structure op {op!r} has two rules")
    RULES.register(name)(rule)
    for op in rule.ops:
        _BY_OP[op] = rule
    return rule


def rule_for(op: str) -> Rule | None:
    return _BY_OP.get(op) or _BY_OP.get(op.rstrip("_"))


#: joins of more pairs than this drop repeated pairs (an edge list of fewer costs nothing)
_DEDUP = 4096


class State:
    """Atoms of every tensor seen so far, plus the joins and blocks recorded by the rules."""

    def __init__(self, graph: Graph, heads: bool = False) -> None:
        self.graph = graph
        #: head mode (see :mod:`.attention`): reshapes may split channels into heads, and
        #: attention calls are recorded in ``attention`` instead of keeping their channels
        self.heads = heads
        self.attention: list[tuple[Call, torch.Tensor]] = []
        self.count = 0
        self.edges: list[torch.Tensor] = []  # [2, E] pairs of atoms to merge
        self.blocks: list[tuple[torch.Tensor, str]] = []
        self.act: dict[int, torch.Tensor] = {}
        #: (id(param), dim) -> atoms [size] of a weight dimension
        self.wdims: dict[tuple[int, int], torch.Tensor] = {}
        #: id(param) -> element atoms (shape of the parameter) for parameters used as data
        self.data: dict[int, torch.Tensor] = {}
        #: id(transposed view) -> the 2-D parameter it transposes (``x @ W.T`` layers)
        self.transposed: dict[int, torch.Tensor] = {}
        #: id(computed weight) -> the parameter it is computed from index for index (a weight
        #: norm), plus a dimension whose slices must stay, with its call and reason (see wdim)
        self.derived: dict[int, tuple[torch.Tensor, tuple[int, Call, str] | None]] = {}
        #: [start, end) of the ids given to each parameter used as data
        self.data_ranges: list[tuple[int, int]] = []
        #: id(param) -> the parameter tensor, for everything in wdims and data
        self.params: dict[int, torch.Tensor] = {}
        #: params passed to calls without a rule: every atom on them is blocked at the end
        self.frozen: dict[int, str] = {}
        #: channel dims cut into pieces at positions fixed by the code: (pieces, call); checked
        #: once the groups are known (see check_cuts)
        self.cuts: list[tuple[list[torch.Tensor], Call]] = []
        #: ids of the outputs of activation products (attention scores): what is combined with
        #: them along a dimension stays, by design (see rules.elementwise)
        self.products: set[int] = set()

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
            self.data_ranges.append((self.count - t.numel(), self.count))
            self.data[id(t)] = a
            self.params[id(t)] = t
            self.act[id(t)] = a
        return a

    def from_data(self, atoms: torch.Tensor) -> bool:
        """All tracked ids of ``atoms`` belong to one parameter used as data (a rotary table)."""
        live = atoms[atoms >= 0]
        if not live.numel():
            return False
        lo, hi = int(live.min()), int(live.max())
        return any(a <= lo and hi < b for a, b in self.data_ranges)

    def atoms(self, t: Any) -> torch.Tensor | None:
        """The atoms of ``t`` at its full shape (a broadcast view: free)."""
        a = self.small(t)
        return a.expand(t.shape) if a is not None else None

    def tracked(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and (
            id(t) in self.act or self.owned(t) or id(t) in self.transposed
        )

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

    def clear(self, call: Call) -> None:
        """The outputs of ``call`` carry no tracked channel."""
        for t in tensors_of(call.out):
            self.set(t, None)

    def wdim(self, p: torch.Tensor, dim: int) -> torch.Tensor:
        """Atoms of dimension ``dim`` of weight ``p`` (created once, shared by every use); those
        of the parameter ``p`` is computed from, where it is a :attr:`derived` weight."""
        p, fixed = self.derived.get(id(p), (p, None))
        key = (id(p), dim)
        if key not in self.wdims:
            self.wdims[key] = self.fresh(p.shape[dim])
            self.params[id(p)] = p
            if fixed is not None and fixed[0] == dim % p.dim():
                self.block(self.wdims[key], fixed[1], fixed[2])
        return self.wdims[key]

    # -- links -----------------------------------------------------------------------------------
    def join(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Merge ``a`` and ``b`` elementwise (same shape) where both are tracked."""
        if a.shape != b.shape:
            a, b = torch.broadcast_tensors(a, b)
        a, b = compact(a, b)
        both = (a != b) & (torch.minimum(a, b) >= 0)
        if not both.any():
            return
        a, b = a[both], b[both]
        if a.numel() > _DEDUP:
            keys = torch.unique((a << 32) | b)  # pairs as one int64: fast dedup
            a, b = keys >> 32, keys & 0xFFFFFFFF
        self.edges.append(torch.stack([a, b]))

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

    def refuse(self, call: Call, why: str) -> None:
        """Keep every channel ``call`` touches (``why`` names the reason) and track no output."""
        self.block_inputs(call, why)
        self.clear(call)


def compress(a: torch.Tensor) -> torch.Tensor:
    """``a`` with size 1 along every dimension on which its values do not change."""
    for d in range(a.dim()):
        if a.shape[d] > 1 and (a.stride(d) == 0 or bool((a == a.narrow(d, 0, 1)).all())):
            a = a.narrow(d, 0, 1)
    return a


def compact(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the broadcast (stride 0) dimensions that all of ``ts`` share: same pairs, less work."""
    dims = [d for d, n in enumerate(ts[0].shape) if n > 1 and all(t.stride(d) == 0 for t in ts)]
    if not dims:
        return ts
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


def first_output(call: Call) -> torch.Tensor | None:
    """The output tensor of ``call`` (the first one of a tuple output)."""
    out = call.out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    return out if isinstance(out, torch.Tensor) else None


NO_RULE = "no channel rule for this op"


def propagate(graph: Graph, heads: bool = False) -> State:
    """Run every rule over the trace; unknown calls on tracked channels block them."""
    from . import rules  # noqa: F401  (registers every rule family)

    st = State(graph, heads)
    for call in graph.calls:
        ins = tensors_of((call.args, call.kwargs))
        found = rule_for(call.name)
        if not any(st.tracked(t) for t in ins) and not (found is not None and found.untracked):
            continue
        if found is None:
            st.refuse(call, NO_RULE)
            continue
        found.apply(call, st)
    for t in graph.tensors(graph.outputs):
        st.block(st.act.get(id(t)), None, "part of the model's output")
    for pid, why in st.frozen.items():
        st.block(st.data.get(pid), None, why)
        for (qid, _), a in st.wdims.items():
            if qid == pid:
                st.block(a, None, why)
    return st


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
