"""Coupled channel groups: sets of parameter slices that are removed together.

A :class:`Group` lists *slots* (one dimension of one parameter or buffer) and, for every slot, an
index matrix ``[units, k]``: unit ``u`` of the group owns indices ``index[u]`` along that slot's
dimension. Units of one group compete with each other; pruning unit ``u`` zeroes (masked) or
removes (shrunk) every one of its slices.

:func:`channel_groups` builds the groups of a model from a traced forward pass
(:mod:`.rules`); attention heads build theirs in :mod:`.heads`.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..masks import get_mask
from ..memo import TensorMemo
from ..targets import Target, is_hf_conv1d, is_prunable
from ..threads import torch_threads
from .experts import find_moe, is_expert_weight
from .graph import Graph, flatten, trace
from .propagate import State, check_cuts, propagate


@dataclass(frozen=True, eq=False)
class Slot:
    """Dimension ``dim`` of ``module.<attr>`` (a parameter or a buffer) at ``name``."""

    name: str
    module: nn.Module
    attr: str
    dim: int

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.attr)

    @property
    def is_param(self) -> bool:
        return self.attr in self.module._parameters

    def target(self) -> Target | None:
        """The prunable weight this slot slices, if it is one (Linear, Conv, Conv1D, a 3-D
        MoE expert weight). Found once per slot."""
        found = self.__dict__.get("_target", self)
        if found is self:
            found = self._find_target()
            object.__setattr__(self, "_target", found)  # frozen: a cache, not a field
        return found

    def _find_target(self) -> Target | None:
        if self.attr == "weight" and is_prunable(self.module):
            return Target(self.name.rpartition(".")[0], self.module, "weight")
        if is_expert_weight(self.module, self.attr):
            return Target(self.name.rpartition(".")[0], self.module, self.attr)
        return None

    def recurrent(self) -> Target | None:
        """The input or recurrent weight of an LSTM/GRU/RNN this slot slices, if it is one
        (scored by data-free criteria; not a target of the pruner)."""
        if isinstance(self.module, nn.RNNBase) and self.attr.startswith("weight_"):
            return Target(self.name.rpartition(".")[0], self.module, self.attr)
        return None

    @property
    def out_dim(self) -> bool:
        """True when the slot is the output-channel dimension of a prunable weight."""
        return self.target() is not None and self.dim == (1 if is_hf_conv1d(self.module) else 0)


@dataclass(eq=False)
class Group:
    """Units that compete for removal, and the slices each unit owns."""

    name: str
    kind: str
    slots: list[Slot]
    #: one ``[units, k]`` LongTensor per slot (``-1``: padding, the unit owns fewer positions)
    index: list[torch.Tensor]
    #: groups sharing a tie prune the same number of units (GQA query heads per KV group)
    tie: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return int(self.index[0].shape[0])

    def members(self) -> Iterator[tuple[Slot, torch.Tensor]]:
        return zip(self.slots, self.index, strict=True)

    def modules(self) -> list[nn.Module]:
        seen: dict[int, nn.Module] = {}
        for s in self.slots:
            seen.setdefault(id(s.module), s.module)
        return list(seen.values())

    def dead(self, cache: dict | None = None) -> torch.Tensor:
        """Units already removed by masks: every masked slice of the unit is all False (and at
        least one of its slices is masked). Returns a bool ``[units]``. ``cache`` shares the
        per-slice work between groups. Index entries ``-1`` pad units that own fewer slices
        (whole layers)."""
        cache = {} if cache is None else cache
        dead = torch.ones(self.units, dtype=torch.bool)
        masked = torch.zeros(self.units, dtype=torch.bool)
        for slot, idx in self.members():
            mask = get_mask(slot.module, slot.attr) if slot.is_param else None
            if mask is None:
                continue
            owned = idx >= 0
            masked |= owned.any(1)
            key = (id(mask), slot.dim)
            if key not in cache:
                cache[key] = live_slices(mask, slot.dim)
            dead &= ~(cache[key][idx.clamp_min(0)] & owned).any(1)
        return dead & masked

    def __repr__(self) -> str:
        return f"Group({self.kind} {self.name!r}, units={self.units}, slots={len(self.slots)})"


#: mask -> dim -> live slices: what :func:`live_slices` found, or what :func:`know_live` was told
_LIVE = TensorMemo()


def live_slices(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """bool ``[mask.shape[dim]]`` (CPU, not to be modified): the slice at each index along
    ``dim`` keeps some entry. Remembered until the mask is written again. (A max over the mask's
    bytes: ``Tensor.any`` over a dimension of a bool tensor is far slower.)"""
    live = _LIVE.get(mask).get(dim)
    if live is None:
        rest = [d for d in range(mask.dim()) if d != dim]
        live = (mask.view(torch.uint8).amax(rest) > 0).cpu() if rest else mask.cpu()
        _LIVE.values(mask)[dim] = live
    return live


def know_live(mask: torch.Tensor, keeps: dict[int, torch.Tensor]) -> None:
    """Record that ``mask`` is, as it stands now, the outer product of ``keeps`` (dim -> bool
    ``[size]``; a dimension left out keeps every index), so that :func:`live_slices` need not
    read it back until it is written again."""
    full = [keeps.get(d, torch.ones(n, dtype=torch.bool)).cpu() for d, n in enumerate(mask.shape)]
    some = all(bool(k.any()) for k in full)
    _LIVE.values(mask).update({d: k if some else torch.zeros_like(k) for d, k in enumerate(full)})


def components(count: int, edges: list[torch.Tensor]) -> torch.Tensor:
    """Connected components of ``count`` atoms under ``edges``: the smallest atom id of each."""
    lab = torch.arange(count)
    if not edges or not count:
        return lab
    a, b = torch.cat(edges, dim=1)
    while True:
        m = torch.minimum(lab[a], lab[b])
        new = lab.scatter_reduce(0, a, m, "amin").scatter_reduce(0, b, m, "amin")
        while True:  # pointer jumping
            nxt = new[new]
            if torch.equal(nxt, new):
                break
            new = nxt
        if torch.equal(new, lab):
            return lab
        lab = new


def _separable_dim(lab: torch.Tensor) -> int | None:
    """The one dimension along which the labels of a parameter change, if there is one."""
    dims = [
        d for d in range(lab.dim()) if lab.shape[d] > 1 and bool((lab != lab.narrow(d, 0, 1)).any())
    ]
    return dims[0] if len(dims) == 1 else None


@dataclass
class ChannelAnalysis:
    """The groups of a traced model, plus the channels left unpruned and why."""

    graph: Graph
    groups: list[Group]
    #: reason -> number of channels it blocked
    blocked: dict[str, int]


def _units(
    entries: list[tuple[Slot, torch.Tensor]],
    weighty: torch.Tensor,
    ent: torch.Tensor,
    pos: torch.Tensor,
    labs: torch.Tensor,
) -> list[tuple[list[Slot], list[torch.Tensor]]]:
    """Units with the same members (entry and count per entry) form one group.

    ``ent``/``pos``/``labs`` list every live (entry, position, label), sorted by label then entry.
    A unit's member list is hashed (two polynomial hashes over its runs, int64 wrap-around) so
    that grouping needs no Python loop over units.
    """
    if not labs.numel():
        return []
    width = len(entries) + 1
    keys, counts = torch.unique_consecutive(labs * width + ent, return_counts=True)
    run_lab, run_ent = keys // width, keys % width
    unit_ids, run_unit = torch.unique_consecutive(run_lab, return_inverse=True)
    first = torch.zeros(len(unit_ids), dtype=torch.long)
    first.scatter_reduce_(0, run_unit, torch.arange(len(run_unit)), "amin", include_self=False)
    rank = torch.arange(len(run_unit)) - first[run_unit]
    has_weight = torch.zeros(len(unit_ids), dtype=torch.bool)
    has_weight[run_unit[weighty[run_ent]]] = True
    sig = []
    for a, b, c in (
        (1_000_003, 998_244_353, 0x9E3779B97F4A7C15 - 2**64),
        (2_147_483_647, 1_000_000_007, 0x632BE59BD9B4E019),
    ):
        term = (run_ent + 1) * a + counts * b
        powers = torch.full((int(rank.max()) + 1,), c, dtype=torch.long).cumprod(0)
        h = torch.zeros(len(unit_ids), dtype=torch.long)
        sig.append(h.index_add_(0, run_unit, term * powers[rank]))
    group_of = _pair_ids(*sig)
    # rows of groups with a weight, sorted by (group, entry); within one, by unit then position
    unit_of_row = torch.repeat_interleave(run_unit, counts)
    live = has_weight[unit_of_row]
    row_group, ent, pos = group_of[unit_of_row][live], ent[live], pos[live]
    key = row_group * width + ent
    order = torch.argsort(key, stable=True)
    keys, seg = torch.unique_consecutive(key[order], return_counts=True)
    members = torch.bincount(group_of).tolist()
    out: dict[int, tuple[list[Slot], list[torch.Tensor]]] = {}
    for k, rows in zip(keys.tolist(), torch.split(pos[order], seg.tolist()), strict=True):
        g, e = divmod(k, width)
        slots, index = out.setdefault(g, ([], []))
        slots.append(entries[e][0])
        index.append(rows.view(members[g], -1))  # [units, k]
    return [out[g] for g in sorted(out)]


def _pair_ids(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The rank of each pair ``(a[i], b[i])`` among the distinct pairs in lexicographic order
    (``torch.unique(dim=0, return_inverse=True)`` of the stacked pairs, by two stable sorts)."""
    order = torch.argsort(b, stable=True)
    order = order[torch.argsort(a[order], stable=True)]
    sa, sb = a[order], b[order]
    new = torch.ones(len(a), dtype=torch.long)
    new[1:] = ((sa[1:] != sa[:-1]) | (sb[1:] != sb[:-1])).long()
    ids = torch.empty_like(new)
    ids[order] = torch.cumsum(new, 0) - 1
    return ids


def _slot(graph: Graph, pid: int, dim: int) -> Slot:
    mod_name, module, attr = graph.owners[pid][0]
    return Slot(f"{mod_name}.{attr}" if mod_name else attr, module, attr, dim)


def analyse(graph: Graph) -> ChannelAnalysis:
    """Group the channels of a traced model."""
    with torch_threads(1):  # hundreds of small ops
        return _analyse(graph)


def _analyse(graph: Graph) -> ChannelAnalysis:
    st: State = propagate(graph)
    lab = components(st.count, st.edges)
    check_cuts(st, lab)
    entries: list[tuple[Slot, torch.Tensor]] = []  # slot, label per index along slot.dim
    for (pid, dim), atoms in st.wdims.items():
        entries.append((_slot(graph, pid, dim), lab[atoms]))
    in_weights = torch.zeros(st.count, dtype=torch.bool)
    for _, labels in entries:
        in_weights[labels] = True
    # the first reason that blocks each label (an index into whys), -1: free
    why_of = torch.full((st.count,), -1, dtype=torch.long)
    whys: list[str] = []

    def block(labels: torch.Tensor, why: str) -> None:
        labels = labels[why_of[labels] < 0]
        if labels.numel():
            why_of[labels] = len(whys)
            whys.append(why)

    for atoms, why in st.blocks:
        block(lab[atoms], why)
    for pid, elem in st.data.items():
        el = lab[elem]
        if not in_weights[el].any():
            continue
        _, module, attr = graph.owners[pid][0]
        if attr in module._non_persistent_buffers_set:  # not saved: the loader rebuilds it whole
            block(el[in_weights[el]], f"{NON_PERSISTENT} {_slot(graph, pid, 0).name}")
            continue
        d = _separable_dim(el) if el.dim() else None
        if d is None:
            owner = graph.owners[pid][0][0] or "<root>"
            block(
                el[in_weights[el]],
                f"used as data, couples channels along several dimensions ({attr} in module "
                f"{owner})",
            )
            continue
        entries.append((_slot(graph, pid, d), el.movedim(d, 0).reshape(el.shape[d], -1)[:, 0]))
    is_blocked = why_of >= 0
    reasons: dict[str, int] = defaultdict(int)
    counts = torch.bincount(why_of[in_weights & is_blocked], minlength=len(whys))
    for why, n in zip(whys, counts.tolist(), strict=True):
        if n:
            reasons[why] += n

    # every live (entry, position, label), sorted by label then entry: one pass builds the units
    weighty = torch.tensor(
        [s.target() is not None or s.recurrent() is not None for s, _ in entries] + [False]
    )
    ent = torch.cat([torch.full((len(lab),), e) for e, (_, lab) in enumerate(entries)])
    pos = torch.cat([torch.arange(len(lab)) for _, lab in entries])
    labs = torch.cat([lab for _, lab in entries])
    live = ~is_blocked[labs]
    ent, pos, labs = ent[live], pos[live], labs[live]
    order = torch.argsort(labs * (len(entries) + 1) + ent, stable=True)
    ent, pos, labs = ent[order], pos[order], labs[order]
    groups = [
        Group(f"{lead.name}[{lead.dim}]", "channel", slots, index)
        for slots, index in _units(entries, weighty, ent, pos, labs)
        for lead in [next((s for s in slots if s.out_dim), slots[0])]
    ]
    groups.sort(key=lambda g: g.name)
    return ChannelAnalysis(graph, groups, dict(reasons))


#: a buffer that is not saved is rebuilt by the model's constructor at load: its shape stays
NON_PERSISTENT = "non-persistent buffer, rebuilt at load:"

#: reasons that are the model's interface or its design, not a gap in the rules: no warning
EXPECTED = (
    "part of the model's output",
    "fed by a model input",
    "layer_norm normalizes",
    "rms_norm normalizes",
    "reduces or normalizes over a channel",
    "a channel dimension is split into several",
    "multiplies activations along their channels",
    "nn.MultiheadAttention ties",
    "combined with a tensor that multiplies activations",
    NON_PERSISTENT,
)


_CACHE = "_pk_channel_groups"


class Same:
    """Objects compared by identity (``==`` is ``is`` for each). A deep copy of a model copies
    them with it, so the copy's cached groups compare equal on the copy."""

    def __init__(self, objects: list[Any]) -> None:
        self.objects = objects

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Same)
            and len(self.objects) == len(other.objects)
            and all(a is b for a, b in zip(self.objects, other.objects, strict=True))
        )

    __hash__ = None  # type: ignore[assignment]


def signature(model: nn.Module, example_inputs: Any) -> tuple:
    """What the groups depend on: every module and tensor of the model (by identity: one
    replaced by another of the same shapes is another model) with its shape, and every tensor
    shape of the inputs."""
    state = model.state_dict(keep_vars=True)
    shapes = tuple((n, tuple(t.shape)) for n, t in state.items())
    # not the model itself: a cache on the model that held it would make a reference cycle,
    # and a dropped model would wait for the garbage collector to free its memory
    same = Same([m for m in model.modules() if m is not model] + list(state.values()))
    leaves = tuple(
        (tuple(x.shape), str(x.dtype)) if isinstance(x, torch.Tensor) else repr(x)
        for x in flatten(example_inputs)
    )
    keys = tuple(sorted(example_inputs)) if isinstance(example_inputs, dict) else ()
    return shapes, same, leaves, keys


def cached_groups(model: nn.Module, example_inputs: Any) -> list[Group] | None:
    """The groups of the last :func:`channel_groups` call on this model (or on the model it was
    deep-copied from: the copy's groups point at the copy's modules), if nothing changed."""
    found = model.__dict__.get(_CACHE)
    if found is not None and found[0] == signature(model, example_inputs):
        return found[1]
    return None


def channel_groups(model: nn.Module, example_inputs: Any, *, warn: bool = True) -> ChannelAnalysis:
    """Trace ``model`` on ``example_inputs`` and return its coupled channel groups."""
    from .heads import remember_channel_trace  # heads builds on this module

    graph = trace(model, example_inputs)
    analysis = analyse(graph)
    model.__dict__[_CACHE] = (signature(model, example_inputs), analysis.groups)
    remember_channel_trace(model, example_inputs, graph)
    # a router's rows are its experts' logits, pruned by granularity="expert", not channels
    routers = tuple(f"in module {moe.router_name})" for moe in find_moe(model))
    unexpected = {
        w: n
        for w, n in analysis.blocked.items()
        if not w.startswith(EXPECTED) and not (routers and w.endswith(routers))
    }
    if warn and unexpected:
        lines = "\n".join(f"  {n} channel(s): {why}" for why, n in sorted(unexpected.items()))
        warnings.warn(
            f"prunekit: some channels of {type(model).__name__} stay unpruned, their removal "
            f"would not be exact:\n{lines}",
            stacklevel=2,
        )
    return analysis
