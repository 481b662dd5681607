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
from itertools import groupby
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..masks import get_mask
from ..targets import Target, is_hf_conv1d, is_prunable
from .graph import Graph, trace
from .rules import State, propagate


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
        """The prunable weight this slot slices, if it is one (Linear, Conv, Conv1D)."""
        if self.attr == "weight" and is_prunable(self.module):
            return Target(self.name.rpartition(".")[0], self.module, "weight")
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
    #: one ``[units, k]`` LongTensor per slot
    index: list[torch.Tensor]
    #: groups sharing a tie prune the same number of units (GQA query heads per KV group)
    tie: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return int(self.index[0].shape[0])

    def members(self) -> Iterator[tuple[Slot, torch.Tensor]]:
        return zip(self.slots, self.index)

    def modules(self) -> list[nn.Module]:
        seen: dict[int, nn.Module] = {}
        for s in self.slots:
            seen.setdefault(id(s.module), s.module)
        return list(seen.values())

    def dead(self, cache: dict | None = None) -> torch.Tensor:
        """Units already removed by masks: every masked slice of the unit is all False (and at
        least one slice is masked). Returns a bool ``[units]``. ``cache`` shares the per-slice
        work between groups."""
        cache = {} if cache is None else cache
        dead = torch.ones(self.units, dtype=torch.bool)
        masked = False
        for slot, idx in self.members():
            mask = get_mask(slot.module, slot.attr) if slot.is_param else None
            if mask is None:
                continue
            masked = True
            key = (id(mask), slot.dim)
            if key not in cache:
                cache[key] = mask.movedim(slot.dim, 0).reshape(mask.shape[slot.dim], -1).any(1).cpu()
            dead &= ~cache[key][idx].any(1)
        return dead if masked else torch.zeros(self.units, dtype=torch.bool)

    def __repr__(self) -> str:
        return f"Group({self.kind} {self.name!r}, units={self.units}, slots={len(self.slots)})"


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
        d for d in range(lab.dim())
        if lab.shape[d] > 1 and bool((lab != lab.narrow(d, 0, 1)).any())
    ]
    return dims[0] if len(dims) == 1 else None


@dataclass
class ChannelAnalysis:
    """The groups of a traced model, plus the channels left unpruned and why."""

    graph: Graph
    groups: list[Group]
    #: reason -> number of channels it blocked
    blocked: dict[str, int]


def _slot(graph: Graph, pid: int, dim: int) -> Slot:
    mod_name, module, attr = graph.owners[pid][0]
    return Slot(f"{mod_name}.{attr}" if mod_name else attr, module, attr, dim)


def analyse(graph: Graph) -> ChannelAnalysis:
    """Group the channels of a traced model."""
    st: State = propagate(graph)
    lab = components(st.count, st.edges)
    entries: list[tuple[Slot, torch.Tensor]] = []  # slot, label per index along slot.dim
    for (pid, dim), atoms in st.wdims.items():
        entries.append((_slot(graph, pid, dim), lab[atoms]))
    in_weights = torch.zeros(st.count, dtype=torch.bool)
    for _, labels in entries:
        in_weights[labels] = True
    blocked: dict[int, str] = {}
    for atoms, why in st.blocks:
        for label in torch.unique(lab[atoms]).tolist():
            blocked.setdefault(label, why)
    for pid, elem in st.data.items():
        el = lab[elem]
        if not in_weights[el].any():
            continue
        d = _separable_dim(el) if el.dim() else None
        if d is None:
            for label in torch.unique(el[in_weights[el]]).tolist():
                blocked.setdefault(label, f"{_slot(graph, pid, 0).name} couples channels along "
                                          "several dimensions")
            continue
        entries.append((_slot(graph, pid, d), el.movedim(d, 0).reshape(el.shape[d], -1)[:, 0]))
    is_blocked = torch.zeros(st.count, dtype=torch.bool)
    if blocked:
        is_blocked[torch.tensor(list(blocked))] = True
    reasons: dict[str, int] = defaultdict(int)
    for label, why in blocked.items():
        if in_weights[label]:
            reasons[why] += 1

    # every live (entry, position, label), sorted by label then entry: one pass builds the units
    weighty = torch.tensor([s.target() is not None for s, _ in entries] + [False])
    ent = torch.cat([torch.full((len(l),), e) for e, (_, l) in enumerate(entries)])
    pos = torch.cat([torch.arange(len(l)) for _, l in entries])
    labs = torch.cat([l for _, l in entries])
    live = ~is_blocked[labs]
    ent, pos, labs = ent[live], pos[live], labs[live]
    order = torch.argsort(labs * (len(entries) + 1) + ent, stable=True)
    ent, pos, labs = ent[order], pos[order], labs[order]
    has_weight = torch.zeros(st.count, dtype=torch.bool)
    has_weight[labs[weighty[ent]]] = True
    by_sig: dict[tuple, list[list[tuple[int, list[int]]]]] = defaultdict(list)
    for _, rows in groupby(zip(labs.tolist(), ent.tolist(), pos.tolist(),
                               has_weight[labs].tolist()), key=lambda r: r[0]):
        rows = list(rows)
        if not rows[0][3]:
            continue  # no prunable weight in it (e.g. a vocabulary row)
        members = [(e, [r[2] for r in rs]) for e, rs in groupby(rows, key=lambda r: r[1])]
        by_sig[tuple((e, len(w)) for e, w in members)].append(members)
    groups = []
    for sig, members_list in by_sig.items():
        slots = [entries[e][0] for e, _ in sig]
        index = [
            torch.tensor([m[j][1] for m in members_list], dtype=torch.long) for j in range(len(sig))
        ]
        lead = next((s for s in slots if s.out_dim), slots[0])
        groups.append(Group(f"{lead.name}[{lead.dim}]", "channel", slots, index))
    groups.sort(key=lambda g: g.name)
    return ChannelAnalysis(graph, groups, dict(reasons))


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
)


def channel_groups(model: nn.Module, example_inputs: Any, *, warn: bool = True) -> ChannelAnalysis:
    """Trace ``model`` on ``example_inputs`` and return its coupled channel groups."""
    analysis = analyse(trace(model, example_inputs))
    unexpected = {w: n for w, n in analysis.blocked.items() if not w.startswith(EXPECTED)}
    if warn and unexpected:
        lines = "\n".join(f"  {n} channel(s): {why}" for why, n in sorted(unexpected.items()))
        warnings.warn(
            f"prunekit: some channels of {type(model).__name__} stay unpruned, their removal "
            f"would not be exact:\n{lines}",
            stacklevel=2,
        )
    return analysis
