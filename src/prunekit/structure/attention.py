"""Attention heads found by structure: what feeds each ``scaled_dot_product_attention`` call.

The model is traced once and its channel ids propagated in head mode (reshapes into heads are
allowed; each attention call is recorded and gives its output fresh ids ``[H, d]``). Then, per
attention call:

* query head ``h`` owns every weight or bias slice whose ids join ``q[:, h]`` or the attention
  output ``out[:, h]``: q rows (plain or fused, in whatever order the code splits them), their
  bias, per-head norms, and the output projection's columns;
* key/value head ``g`` owns every slice joining ``k[:, g]`` or ``v[:, g]`` (repeated or
  ``enable_gqa`` KV heads are recognised by their ids, so GQA and MQA group themselves);
* per-head tables (relative position biases added to the attention mask) are parameters whose
  elements reach the mask of head ``h`` only, sliced along the one dimension that separates them.

A head layout is kept only if heads own disjoint slices of equal size; anything else is left to
the registered adapters (:mod:`.heads`). Counts stored as attributes (``num_heads`` ...) are not
visible in a trace: :class:`StructuralAdapter` updates the usual ones after slicing, and
``pk.shrink`` verifies the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention_pattern import heads_fold, unfold_heads, with_eager_attention
from .graph import Call, Graph, trace
from .groups import Slot, components, signature
from .propagate import State, arg, compress, propagate, varying


@dataclass
class FoundHeads:
    """The head layout of one attention call."""

    module: str
    hq: int
    hkv: int
    d: int
    #: (slot, index [hq, k]) slices of each query head; (slot, index [hkv, k]) of each KV head
    q: list[tuple[Slot, torch.Tensor]]
    kv: list[tuple[Slot, torch.Tensor]]
    #: channel label -> unit (query head h, or hq + KV head g; -1: none)
    owner: torch.Tensor | None = None
    #: the values' (and output's) head size where it differs from ``d`` (None: ``d``)
    dv: int | None = None


def _slot(graph: Graph, pid: int, dim: int) -> Slot:
    mod_name, module, attr = graph.owners[pid][0]
    return Slot(f"{mod_name}.{attr}" if mod_name else attr, module, attr, dim)


def _per_head(atoms: torch.Tensor | None, t: Any, lab: torch.Tensor) -> torch.Tensor | None:
    """Labels ``[H, d]`` of a ``[B, H, T, d]`` tensor whose ids vary along H and d only."""
    if atoms is None or not isinstance(t, torch.Tensor) or t.dim() != 4:
        return None
    small = compress(atoms)
    if small.dim() != 4 or small.shape[0] != 1 or small.shape[2] != 1:
        return None
    full = small.expand(1, t.shape[1], 1, t.shape[3])[0, :, 0, :]  # [H, d]
    if bool((full < 0).any()):
        return None
    return lab[full]


def _operands(st: State, call: Call) -> list[tuple[Any, torch.Tensor | None]]:
    """(tensor, its channel ids) of q, k, v and the mask of an attention call, each
    ``[B, H, ...]``: inputs with heads folded into the batch (``[B * H, T, d]``) are unfolded
    the way the queries' ids repeat."""
    ts = [call.args[0], arg(call, 1, "key"), arg(call, 2, "value"), arg(call, 3, "attn_mask")]
    q = st.small(ts[0])
    if not isinstance(ts[0], torch.Tensor) or ts[0].dim() != 3 or q is None:
        return [(t, st.small(t)) for t in ts]
    h, outer = heads_fold(q)
    out = []
    for t in ts:
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[0] != ts[0].shape[0]:
            out.append((t, None))
            continue
        a = st.atoms(t)
        out.append(
            (unfold_heads(t, h, outer), None if a is None else compress(unfold_heads(a, h, outer)))
        )
    return out


def _unit_index(owner: torch.Tensor, units: range) -> torch.Tensor | None:
    """``[len(units), k]`` positions owned by each unit (equal counts), or None."""
    rows = [torch.nonzero(owner == u).flatten() for u in units]
    if len({len(r) for r in rows}) != 1 or not len(rows[0]):
        return None
    return torch.stack(rows)


def _separable(hid: torch.Tensor) -> tuple[int, torch.Tensor] | None:
    """The one dimension along which the head ids of a data parameter change, and the head of
    each index along it. Elements no head reached (``-1``) follow their index's head."""
    found = []
    for d in range(hid.dim()):
        rows = hid.movedim(d, 0).reshape(hid.shape[d], -1)  # [n, rest]
        head = rows.max(1).values
        if bool(((rows == head[:, None]) | (rows < 0)).all()) and len(set(head.tolist())) > 1:
            found.append((d, head))
    return found[0] if len(found) == 1 else None


class _Labels:
    """The labels of many tensors, flattened once, so that each attention call finds the few
    tensors its heads reach with one lookup (``reached``) instead of one per tensor."""

    def __init__(self, items: dict, lab: torch.Tensor) -> None:
        self.keys = list(items)
        self.labels = [lab[a] for a in items.values()]
        self.flat = torch.cat([x.reshape(-1) for x in self.labels]) if self.labels else lab[:0]
        sizes = torch.tensor([x.numel() for x in self.labels], dtype=torch.long)
        self.seg = torch.repeat_interleave(torch.arange(len(self.labels)), sizes)

    def reached(self, owner: torch.Tensor) -> list[tuple[Any, torch.Tensor]]:
        """(key, labels) of every tensor some of whose labels have an owner (``>= 0``)."""
        hit = torch.zeros(len(self.keys), dtype=torch.bool)
        hit[self.seg[owner[self.flat] >= 0]] = True
        return [(self.keys[i], self.labels[i]) for i in torch.nonzero(hit).flatten().tolist()]


def _layout(
    st: State, lab: torch.Tensor, call, slots: torch.Tensor, weights: _Labels, data: _Labels
) -> FoundHeads | str:
    """The head layout of one attention call, or why it cannot be told."""
    ops = _operands(st, call)
    mask, ma = ops[3]
    ql, kl, vl = (_per_head(a, t, lab) for t, a in ops[:3])
    if ql is None or kl is None or vl is None:
        return (
            "its queries, keys or values are not [batch, heads, tokens, head size] tensors whose "
            "channels come from projections, one set per head (a reshape mixes heads, or they "
            "are computed from no weight)"
        )
    hq, d = ql.shape
    dv = vl.shape[1]  # the values' head size (LeViT's is a multiple of the queries')
    if slots.numel() != hq * dv or kl.shape[1] != d:
        return "its keys' head size differs from its queries', or its output's from its values'"
    out = lab[slots.reshape(hq, dv)]
    # KV heads: distinct label sets among the (possibly repeated) k/v heads
    kv_sets: dict[tuple[int, ...], int] = {}
    kv_of = []
    for g in range(kl.shape[0]):
        key = tuple(sorted(set(kl[g].tolist()) | set(vl[g].tolist())))
        kv_of.append(kv_sets.setdefault(key, len(kv_sets)))
    hkv = len(kv_sets)
    if hkv < 1 or hq % hkv or hq % kl.shape[0]:
        return f"its {hq} query heads do not split evenly over {hkv} key/value heads"
    rep_k = hq // kl.shape[0]
    group_of_q = [kv_of[h // rep_k] for h in range(hq)]
    rep = hq // hkv
    if group_of_q != [h // rep for h in range(hq)]:  # query heads of a KV group are contiguous
        return "the query heads that share a key/value head are not consecutive"
    owner = torch.full((st.count,), -1, dtype=torch.long)
    for h in range(hq):
        owner[ql[h]] = h
        owner[out[h]] = h
    ma = ma if isinstance(mask, torch.Tensor) and mask.dim() == 4 else None
    per_head_ids = ma is not None and compress(ma).shape[1] == hq
    heads_mask = isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[1] == hq > 1
    if heads_mask and not per_head_ids and not torch.equal(mask, mask[:, :1].expand_as(mask)):
        return (
            "a per-head tensor of unknown origin (not a parameter's rows) is added to its "
            "attention scores"
        )
    if per_head_ids and mask.shape[1] == hq:
        ml = lab[ma.expand(mask.shape)[:1]]  # [1, H, T, S]: per-head position biases
        per = [torch.unique(ml[:, h]) for h in range(hq)]
        ids, count = torch.unique(torch.cat(per), return_counts=True)
        own = set(ids[(count == 1) & (ids >= 0)].tolist())  # ids shared by heads stay whole
        for h in range(hq):
            mine = torch.tensor([i for i in per[h].tolist() if i in own], dtype=torch.long)
            if bool((owner[mine] >= 0).any()):
                return "its per-head score bias shares channels with its queries or output"
            owner[mine] = h
    for key, g in kv_sets.items():
        ids = torch.tensor(key)
        if bool((owner[ids] >= 0).any()):
            return "its queries and keys/values share channels"
        owner[ids] = hq + g
    found = FoundHeads(call.module, hq, hkv, d, [], [], owner, dv)
    widths: dict[str, set[int]] = {"q": set(), "out": set(), "kv": set()}
    q_ids, out_ids = torch.unique(ql), torch.unique(out)
    kv_ids = torch.tensor(sorted({i for key in kv_sets for i in key}), dtype=torch.long)
    for (pid, dim), labels in weights.reached(owner):
        slot = _slot(st.graph, pid, dim)
        if not _add(found, slot, owner[labels]):
            return f"the heads own unequal or overlapping parts of {slot.name} (dim {slot.dim})"
        for part, ids in (("q", q_ids), ("out", out_ids), ("kv", kv_ids)):
            hit = torch.isin(labels, ids)
            if bool(hit.any()):
                units = hq if part != "kv" else hkv
                widths[part].add(int(hit.sum()) // units)
    sizes = {"q": (d,), "out": (dv,), "kv": (d, dv, d + dv)}  # channels per head of each part
    for part, what in (
        ("q", "queries do not come from a projection"),
        ("out", "output does not reach an output projection"),
        ("kv", "keys/values do not come from a projection"),
    ):
        if not any(w % n == 0 and w >= n for w in widths[part] for n in sizes[part]):
            return f"its heads' {what} with {sizes[part][0]} channels per head (an op mixes heads)"
    for pid, labels in data.reached(owner):
        hid = owner[labels]
        if hkv == 1 and bool((hid[hid >= 0] == hq).all()):
            continue  # reached only through the one KV head, which always stays
        sep = _separable(hid)
        slot = _slot(st.graph, pid, sep[0] if sep is not None else 0)
        if sep is None or not _add(found, slot, sep[1]):
            return f"the per-head tensor {slot.name} does not split along one dimension by head"
    return found


def _add(found: FoundHeads, slot: Slot, owner: torch.Tensor) -> bool:
    """Record the per-head positions of one slot (``owner``: unit id per position, -1: none);
    False when some heads own positions of it and others do not, or not as many."""
    for units, into in (
        (range(found.hq), found.q),
        (range(found.hq, found.hq + found.hkv), found.kv),
    ):
        if not bool(((owner >= units.start) & (owner < units.stop)).any()):
            continue
        index = _unit_index(owner, units)
        if index is None:
            return False
        into.append((slot, index))
    return True


_CACHE = "_pk_found_heads"


def find_heads(
    model: nn.Module, example_inputs: Any, served: list[str]
) -> list[FoundHeads | Unproven]:
    """The head layout of every attention call of ``model`` that structure can tell, leaving
    out the ``served`` modules (those a class adapter serves: :func:`.heads.served_by_class`).
    The result is kept on the model (and follows it through a deepcopy, as ``pk.shrink`` makes)
    until a shape of the model or of the inputs changes."""
    key = signature(model, example_inputs)
    found = model.__dict__.get(_CACHE)
    if found is not None and found[0] == key:
        return found[1]
    return remember_heads(model, example_inputs, trace(model, example_inputs), served)


def remember_heads(
    model: nn.Module, example_inputs: Any, graph: Graph, served: list[str]
) -> list[FoundHeads | Unproven]:
    """The head layouts of a trace of ``model`` (:func:`heads_of`), kept on the model, so that
    a trace made for channels serves heads too and :func:`find_heads` needs no trace of its own."""
    found = heads_of(graph, served)
    model.__dict__[_CACHE] = (signature(model, example_inputs), found)
    return found


def nested(a: str, b: str) -> bool:
    """Module name ``a`` is ``b``, inside it, or holds it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".") or not b or not a


@dataclass
class Unproven:
    """An attention call (scaled-dot-product, or an eager matmul-softmax-matmul chain) whose
    heads structure cannot prove separable, and why."""

    module: str
    why: str


def heads_of(graph: Graph, served: list[str]) -> list[FoundHeads | Unproven]:
    """The head layout of every attention call of a trace (eager matmul-softmax-matmul chains
    included), or why structure cannot tell it. Calls in or around the ``served`` modules are
    left out; where no other remains, nothing is propagated."""
    graph = with_eager_attention(graph)

    def left_out(call: Call) -> bool:
        return any(nested(call.module, n) for n in served)

    if all(left_out(c) for c in graph.calls if c.name == "scaled_dot_product_attention"):
        return []  # (st.attention records these calls only)
    st = propagate(graph, heads=True)
    lab = components(st.count, st.edges)
    by_module: dict[str, FoundHeads | Unproven] = {}
    weights, data = _Labels(st.wdims, lab), _Labels(st.data, lab)
    for call, slots in st.attention:  # per module: its first layout, else why none
        if isinstance(by_module.get(call.module), FoundHeads) or left_out(call):
            continue
        heads = _layout(st, lab, call, slots, weights, data)
        if isinstance(heads, FoundHeads) or call.module not in by_module:
            by_module[call.module] = (
                heads if isinstance(heads, FoundHeads) else (Unproven(call.module, heads))
            )
    found = list(by_module.values())
    owners = [(i, f.owner) for i, f in enumerate(found) if isinstance(f, FoundHeads)]
    for i, why in _mixed(st, lab, owners).items():
        found[i] = Unproven(found[i].module, why)
    return found


#: ops that combine values along ``dim`` (argument position): heads must not meet there
_ALONG = {"softmax": 1, "log_softmax": 1, "cumsum": 1, "cumprod": 1, "norm": 2}
_REDUCE = (
    "sum", "mean", "amax", "amin", "var", "std", "logsumexp", "prod", "max", "min", "nansum",
    "nanmean", "median", "linalg_vector_norm",
)  # fmt: skip
_PRODUCT = ("matmul", "__matmul__", "bmm", "baddbmm", "mm")


def _combined(st: State, call: Call, pos: int, t: torch.Tensor) -> set[int] | None:
    """Dimensions of input ``pos`` (``t``) whose values ``call`` combines with each other, or
    None where it does not combine values of one input (or is a weight op)."""
    name = call.name.rstrip("_")
    if name in _REDUCE or name in _ALONG:
        if (
            name in ("max", "min")
            and len([a for a in call.args if isinstance(a, torch.Tensor)]) > 1
        ):
            return None
        dim = arg(call, _ALONG.get(name, 1), "dim")
        dims = range(t.dim()) if dim is None else [dim] if isinstance(dim, int) else dim
        return {d % t.dim() for d in dims}
    if name in _PRODUCT:
        ins = [a for a in call.args if isinstance(a, torch.Tensor)]
        weights = any(st.owned(a) or id(a) in st.transposed for a in ins)  # a linear layer
        if len(ins) < 2 or weights or t.dim() < 2:
            return None
        return {t.dim() - 1} if pos == 0 else {t.dim() - 2}
    return None


def _mixed(st: State, lab: torch.Tensor, owners: list[tuple[int, torch.Tensor]]) -> dict[int, str]:
    """Layouts whose heads meet outside the attention: a reduction, softmax or product of
    activations combining values of different heads (``owners``: layout index, label -> head)."""
    if not owners:
        return {}
    layout = torch.full((st.count,), -1, dtype=torch.long)
    unit = torch.full((st.count,), -1, dtype=torch.long)
    for i, owner in owners:
        mine = owner >= 0
        layout[mine], unit[mine] = i, owner[mine]
    hit: dict[int, str] = {}
    for call in st.graph.calls:
        if call.name == "scaled_dot_product_attention":
            continue
        for pos, t in enumerate(a for a in call.args if isinstance(a, torch.Tensor)):
            atoms = st.act.get(id(t))
            if atoms is None or t.dim() == 0:
                continue
            labels = lab[atoms.clamp_min(0)]
            u = torch.where(atoms >= 0, unit[labels], -1)
            if not bool((u >= 0).any()):
                continue
            dims = _combined(st, call, pos, t)
            if dims is None or not dims & set(varying(u)):
                continue
            for i in torch.unique(layout[labels][u >= 0]).tolist():
                hit.setdefault(i, f"its heads are combined outside the attention ({call.where()})")
    return hit


#: count attributes updated after slicing, by what they count
Q_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "num_attn_heads", "heads")
KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
#: counts that cut a fused projection into equal blocks of heads (see heads.Heads.chunks)
CHUNK_ATTRS = ("mp_num",)
WIDTH_ATTRS = ("all_head_size", "inner_dim", "embed_dim", "split_size", "hidden_size", "proj_size")


class StructuralAdapter:
    """Updates the head counts of a module whose heads were found by structure: every count
    attribute that still holds the old value takes the new one. The new counts come from how
    many positions the slots lost: a q-only slot (the output projection) gives the query heads,
    a k/v slot (less its query rows, where q, k and v are fused) the KV heads."""

    def __init__(self, heads: FoundHeads) -> None:
        self.heads = heads
        self.initial = (heads.hq, heads.hkv)
        own = f"{heads.module}."  # count from the module's own slices first
        kv = sorted(heads.kv, key=lambda e: not e[0].name.startswith(own))
        kv_slots = {id(s) for s, _ in kv}
        q_only = [(s, i) for s, i in heads.q if id(s) not in kv_slots]
        self.q = q_only[0] if q_only else heads.q[0]
        self.kv = kv[0]
        #: the query rows that the k/v slot holds too (fused projections), [hq, k] or None
        kv_slot = self.kv[0]
        self.kv_q = next(
            (i for s, i in heads.q if (s.name, s.dim) == (kv_slot.name, kv_slot.dim)), None
        )
        self.sizes = [s.tensor.shape[s.dim] for s, _ in (self.q, self.kv)]
        self.now = (heads.hq, heads.hkv, heads.d)
        #: an adapter of the module's class that adds what structure cannot tell (its
        #: ``resize`` runs after this one: a cache of per-head tensors to drop, a width to set)
        self.extra: Any = None

    def resize(self, module: nn.Module) -> None:
        (hq0, hkv0), d, dv = self.initial, self.heads.d, self.heads.dv or self.heads.d
        (qs, qi), (ks, ki) = self.q, self.kv
        hq = hq0 - (self.sizes[0] - qs.tensor.shape[qs.dim]) // qi.shape[1]
        lost = self.sizes[1] - ks.tensor.shape[ks.dim]
        if self.kv_q is not None:
            lost -= (hq0 - hq) * self.kv_q.shape[1]
        hkv = hkv0 - lost // ki.shape[1]
        changes = [(Q_ATTRS, hq0, hq), (KV_ATTRS, hkv0, hkv), (WIDTH_ATTRS, hq0 * dv, hq * dv)]
        changes.append((("num_key_value_groups",), hq0 // hkv0, hq // max(hkv, 1)))
        for names, old, value in changes:
            for a in names:
                if old != value and getattr(module, a, None) == old:
                    setattr(module, a, value)
        self.now = (hq, hkv, d)
        if self.extra is not None:
            self.extra.resize(module)

    def reattach(self, module: nn.Module) -> None:
        """The class adapter's (:attr:`extra`), if any: run after :meth:`resize`."""
        if self.extra is not None:
            self.extra.reattach(module)

    def counts(self, module: nn.Module) -> tuple[int, int, int]:
        """(query heads, KV heads, head size) after the last :meth:`resize`."""
        return self.now
