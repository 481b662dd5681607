"""Score the units of groups with a criterion, pick the ones to prune, and mask them."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import torch
from torch import nn

from ..allocation import Allocation
from ..criteria import CRITERIA, Criterion, ScoreContext
from ..errors import ConfigError, WeightError
from ..granularity.structured import Structured
from ..masks import get_mask, shrink_mask
from ..targets import Target
from ..threads import torch_threads
from .experts import alignment, is_expert_weight
from .groups import Group, Slot, know_live


def _element_scores(
    criterion: Criterion, slot: Slot, ctx: ScoreContext, cache: dict[int, torch.Tensor]
) -> torch.Tensor | None:
    """The criterion's element scores summed per index along the slot's dimension ``[size]``."""
    target = slot.target()
    if target is None and not criterion.stats:
        target = slot.recurrent()  # data-free and gradient criteria score any weight
    if target is None:
        return None
    return _reduce(criterion, target, slot.dim, ctx, cache)


def _reduce(
    criterion: Criterion, target: Target, dim: int, ctx: ScoreContext, cache: dict
) -> torch.Tensor:
    """The criterion's scores of ``target`` summed over every dimension but ``dim``."""
    fast = criterion.slice_scores(target, ctx, dim)
    if fast is not None:
        return fast.float().cpu()
    key = id(target.weight)
    if key not in cache:
        cache[key] = target.from_matrix(criterion.scores(target, ctx).float()).cpu()
    s = cache[key]
    rest = [d for d in range(s.dim()) if d != dim]
    return s.sum(rest) if rest else s


def unit_scores(
    criterion: Criterion,
    group: Group,
    ctx: ScoreContext,
    cache: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The importance of each unit of ``group`` ``[units]``.

    In order of precedence: the criterion's own :meth:`~prunekit.criteria.Criterion.group_scores`;
    else, if it gives :meth:`~prunekit.criteria.Criterion.channel_scores` for the output channels
    of the group's layers, their sum (APoZ, mean activation, FPGM score producers only); else the
    sum of its element scores over every member slice (L1, L2, Taylor).
    """
    custom = criterion.group_scores(group, ctx)
    if custom is not None:
        return custom.float().cpu()
    cache = {} if cache is None else cache
    total = torch.zeros(group.units)
    found = False
    for slot, idx in group.members():
        target = slot.target()
        if target is not None and slot.out_dim:
            per = criterion.channel_scores(target, ctx)
            if per is not None:
                total += _gather(per.float().reshape(-1).cpu(), idx)
                found = True
    if found:
        return total
    for slot, idx in group.members():
        per = _element_scores(criterion, slot, ctx, cache)
        if per is not None:
            total += _gather(per, idx)
            found = True
    if not found and not criterion.stats:  # parameters used directly (XLNet's einsum heads)
        for (slot, idx), target in zip(group.members(), raw_targets(group), strict=True):
            if target is not None:
                total += _gather(_reduce(criterion, target, slot.dim, ctx, cache), idx)
    return total


def raw_targets(group: Group) -> list[Target | None]:
    """Per slot, its parameter as a :class:`Target`, where no slot of ``group`` is a layer's
    weight (parameters a forward uses directly, such as XLNet's ``[d_model, heads, d_head]``
    projections): data-free and gradient criteria score them. Otherwise empty."""
    if any(s.target() is not None or s.recurrent() is not None for s in group.slots):
        return []
    return [
        Target(s.name.rpartition(".")[0], s.module, s.attr) if s.is_param else None
        for s in group.slots
    ]


def _gather(per: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``per[idx].sum(1)`` over the owned (non-padding) entries of ``idx [units, k]``."""
    return (per[idx.clamp_min(0)] * (idx >= 0)).sum(1)


def group_targets(groups: list[Group], recurrent: bool = False) -> list[Target]:
    """The prunable weights the groups touch (for criteria that collect statistics), and the
    LSTM/GRU/RNN weights and :func:`raw_targets` with ``recurrent``."""
    seen: dict[int, Target] = {}
    for g in groups:
        for s in g.slots:
            t = s.target() or (s.recurrent() if recurrent else None)
            if t is not None:
                seen.setdefault(id(t.weight), t)
        for t in raw_targets(g) if recurrent else []:
            if t is not None:
                seen.setdefault(id(t.weight), t)
    return list(seen.values())


def check_statistics(groups: list[Group], criterion: Criterion, granularity: Structured) -> None:
    """Refuse, before any calibration, a criterion that ranks units by per-layer activation
    statistics where those statistics cannot rank them: LSTM/GRU/RNN units (their gates mix the
    unit's own past outputs) and MoE expert weights (each expert sees only its routed tokens)."""
    if not criterion.stats:
        return
    name = CRITERIA.name_of(type(criterion))
    for g in groups:
        for s in g.slots:
            if s.recurrent() is not None:
                raise ConfigError(
                    f"criterion {name!r} ranks units by per-layer activation statistics, which "
                    f"cannot rank the units of recurrent layer {s.name.rpartition('.')[0]} "
                    f"({type(s.module).__name__}); use a data-free criterion (magnitude, l2, "
                    "random) or a gradient one (taylor, obd)"
                )
    raw = sorted({t.qualname for g in groups for t in raw_targets(g) if t is not None})
    if raw:
        raise ConfigError(
            f"criterion {name!r} ranks units by per-layer activation statistics, which "
            f"parameters that a forward uses directly ({', '.join(raw[:3])}"
            f"{', ...' if len(raw) > 3 else ''}) do not have; use a data-free criterion "
            "(magnitude, l2, random) or a gradient one (taylor, obd)"
        )
    experts = sorted(
        {t.qualname for t in group_targets(groups) if is_expert_weight(t.module, t.param)}
    )
    if experts:
        raise ConfigError(
            f"criterion {name!r} ranks {granularity.spec} units by per-layer input "
            f"statistics, which MoE expert weights ({', '.join(experts[:3])}"
            f"{', ...' if len(experts) > 3 else ''}) do not have: each expert sees only the "
            "tokens routed to it. Use a weight criterion (magnitude, l2, taylor, obd, fpgm, "
            "random), or remove whole experts with granularity='expert', criterion='reap'"
        )


def role(group: Group) -> tuple:
    """What a group is, regardless of which layer holds it: its kind, unit count and, per slot,
    the module type, parameter, dimension and shape (layer ``i``'s MLP matches layer ``j``'s)."""
    return (
        group.kind,
        group.units,
        tuple((type(s.module).__name__, s.attr, s.dim, tuple(s.tensor.shape)) for s in group.slots),
    )


def _keep_count(units: int, prune: int, round_to: int, max_ratio: float) -> int:
    prune = min(prune, math.floor(max_ratio * units + 1e-9), units - 1)
    keep = units - max(prune, 0)
    if round_to > 1 and keep % round_to:
        keep = min(units, math.ceil(keep / round_to) * round_to)
    return keep


def _fitting(group: Group, keep: int, step: int) -> int:
    """``keep``, raised by ``step`` until the group's ``info["fits"]`` accepts it (a hidden
    width the model's config must be able to state)."""
    fits = group.info.get("fits")
    while fits is not None and keep < group.units and not fits(keep):
        keep = min(group.units, keep + step)
    return keep


def choose(
    groups: list[Group],
    scores: list[torch.Tensor],
    sparsity: float,
    allocation: Allocation,
    round_to: int = 1,
    max_ratio: float = 1.0,
    uniform: bool = False,
) -> list[torch.Tensor]:
    """A bool prune-mask ``[units]`` per group. Dead units score ``-inf`` and count as pruned.

    The allocation sees each group as a layer of units (keyed by group name); ``uniform`` then
    gives every group of one :func:`role` the mean of their counts, ``round_to`` and
    ``max_ratio`` adjust each group's count (a hidden width then grows to one its config can
    state), and tied groups keep the same width.
    """
    names = [f"{g.name}#{i}" for i, g in enumerate(groups)]  # group names may repeat
    budget = allocation.layer_sparsities(dict(zip(names, scores, strict=True)), sparsity)
    prune = [round(budget[n] * g.units) for n, g in zip(names, groups, strict=True)]
    if uniform:
        roles: dict[tuple, list[int]] = defaultdict(list)
        for i, g in enumerate(groups):
            roles[role(g)].append(i)
        for members in roles.values():
            mean = round(sum(prune[i] for i in members) / len(members))
            for i in members:
                prune[i] = mean
    keep = []
    for g, p in zip(groups, prune, strict=True):
        step = math.lcm(round_to, alignment(g))
        keep.append(_fitting(g, _keep_count(g.units, p, step, max_ratio), step))
    ties: dict[str, int] = {}
    for g, k in zip(groups, keep, strict=True):
        if g.tie is not None:
            ties[g.tie] = max(ties.get(g.tie, 0), k)
    out = []
    for g, s, k in zip(groups, scores, keep, strict=True):
        k = ties.get(g.tie, k) if g.tie is not None else k
        mask = torch.zeros(g.units, dtype=torch.bool)
        mask[torch.argsort(s, stable=True)[: g.units - k]] = True
        out.append(mask)
    return out


@torch.no_grad()
def apply_masks(groups: list[Group], pruned: list[torch.Tensor]) -> None:
    """Zero the slices of the pruned units with masks (parameters only; buffers keep values)."""
    drops: dict[int, tuple[nn.Module, str, dict[int, torch.Tensor]]] = {}
    for g, mask in zip(groups, pruned, strict=True):
        if not mask.any():
            continue
        for slot, idx in g.members():
            if not slot.is_param:
                continue
            t = slot.tensor
            by_dim = drops.setdefault(id(t), (slot.module, slot.attr, {}))[2]
            if slot.dim not in by_dim:
                by_dim[slot.dim] = torch.zeros(t.shape[slot.dim], dtype=torch.bool)
            drop = idx[mask].reshape(-1)
            by_dim[slot.dim][drop[drop >= 0]] = True
    for module, attr, by_dim in drops.values():
        shape = getattr(module, attr).shape
        keep = None
        for dim, drop in by_dim.items():
            view = [1] * len(shape)
            view[dim] = shape[dim]
            kept = (~drop).view(view).view(torch.uint8)  # broadcasts along the other dims
            keep = kept if keep is None else keep * kept  # as bytes: bool & is far slower
        fresh = get_mask(module, attr) is None
        mask = shrink_mask(module, attr, keep.expand(shape).view(torch.bool))  # copied there
        if fresh:  # the mask is the product of the keeps: its live slices are known
            know_live(mask, {d: ~drop for d, drop in by_dim.items()})


def prune_groups(
    groups: list[Group],
    sparsity: float,
    criterion: Criterion,
    ctx: ScoreContext,
    allocation: Allocation,
    granularity: Structured,
) -> None:
    """Prune ``sparsity`` of the units of the groups, spread over them by ``allocation``.

    A call that removes nothing (no group, or every group too small for the request) warns."""
    if not groups:
        _warn_nothing(f"the model has no prunable {granularity.spec} group")
        return
    check_statistics(groups, criterion, granularity)
    criterion.collect(group_targets(groups, recurrent=not criterion.stats), ctx)
    with torch_threads(1):  # hundreds of small ops
        cache: dict[int, torch.Tensor] = {}
        dead_cache: dict = {}
        scores, dead = [], []
        for g in groups:
            s = unit_scores(criterion, g, ctx, cache)
            if not torch.isfinite(s).all():
                raise WeightError(
                    f"channel group {g.name} scores NaN or inf: its weights hold NaN or inf; "
                    "fix them before pruning"
                )
            dead.append(g.dead(dead_cache))
            scores.append(s.masked_fill(dead[-1], -torch.inf))
        pruned = choose(
            groups,
            scores,
            sparsity,
            allocation,
            granularity.round_to,
            granularity.max_ratio,
            granularity.uniform,
        )
        granularity.check_choice(groups, pruned)
        apply_masks(groups, pruned)
    if sparsity > 0 and not any(bool((p & ~d).any()) for p, d in zip(pruned, dead, strict=True)):
        _warn_nothing(f"no {granularity.spec} group can lose a unit at sparsity {sparsity:g}")


def _warn_nothing(why: str) -> None:
    warnings.warn(f"prunekit: this prune removes nothing: {why}", stacklevel=3)
