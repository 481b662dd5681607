"""How one prune runs: scores → allocation → masks, by one of three strategies.

The strategy follows from what the plugins declare, never from their classes:

* ``granularity.structured`` (channels, heads): the units are coupled groups found by tracing
  the model; :func:`prune_structured`.
* ``criterion.layerwise`` (Wanda, SparseGPT, regression, APoZ, ...): calibration statistics are
  per layer, so the block runner calibrates and prunes block by block, each block seeing the
  pruned outputs of the ones before; :func:`prune_blockwise`.
* otherwise the criterion scores every target at once; :func:`prune_whole`.

In all three the allocation turns unit scores into per-layer sparsities, so ``scope`` means the
same for weights, blocks, channels and heads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .calibrate import LayerStats, as_batches, check_batches, run_blockwise
from .calibrate.memory import release_freed_memory
from .criteria import ScoreContext, Solver
from .errors import WeightError
from .granularity.nm import NM
from .masks import get_mask, record_granularity
from .progress import track
from .reconstruct.refine import refine_target
from .structure.select import prune_groups
from .targets import Target

if TYPE_CHECKING:
    from .pruner import Pruner

Strategy = Callable[["Pruner", ScoreContext, float], None]


def strategy_for(pruner: Pruner) -> Strategy:
    """The strategy the resolved plugins call for."""
    res = pruner.resolved
    if res.granularity.structured:
        return prune_structured
    if res.criterion.layerwise or res.reconstruct is not None or res.refine:
        return prune_blockwise
    return prune_whole


def check_finite(targets: list[Target]) -> None:
    """Refuse weights holding NaN or inf before any of them is masked."""
    for t in targets:
        if not torch.isfinite(t.weight.detach().sum()):  # NaN/inf propagate; no big temporary
            raise WeightError(f"{t.qualname} holds NaN or inf weights; fix them before pruning")


def prune_structured(pruner: Pruner, ctx: ScoreContext, sparsity: float) -> None:
    """Score every coupled group's units, allocate, and mask the pruned units' slices."""
    res = pruner.resolved
    groups = pruner.groups()
    prune_groups(groups, sparsity, res.criterion, ctx, res.allocation, res.granularity)
    sliced = [t for g in groups for s in g.slots if (t := s.target()) is not None]
    for t in pruner.targets + sliced:  # sliced: MoE expert weights too
        if get_mask(t.module, t.param) is not None:
            record_granularity(t.module, t.param, res.granularity.spec)


def prune_whole(pruner: Pruner, ctx: ScoreContext, sparsity: float) -> None:
    """Score every target with whole-model statistics, allocate, mask."""
    res = pruner.resolved
    check_finite(pruner.targets)
    gran = res.criterion.comparison(res.granularity)
    res.criterion.collect(pruner.targets, ctx)
    scores = {
        t.qualname: pruner.scores(t, ctx)
        for t in track(pruner.targets, "scoring layers", pruner.progress)
    }
    budget = res.allocation.layer_sparsities(
        {name: gran.unit_scores(s) for name, s in scores.items()}, sparsity
    )
    for t in pruner.targets:
        pruner.attach(t, gran.select(scores[t.qualname], budget[t.qualname]))


def prune_embeddings(pruner: Pruner, tables: list[Target], sparsity: float) -> None:
    """Mask the included embedding tables of a layer-wise criterion's prune by magnitude.

    A table's input is a token id, not an activation: within one token's vector every weight
    sees the same input, so activation-weighted scores (Wanda) order them as magnitude does, and
    no other weight can compensate (SparseGPT's update is empty). Each table gets ``sparsity``.
    """
    if tables:
        warnings.warn(
            f"{', '.join(t.qualname for t in tables)}: embedding tables have no input "
            f"activations for {pruner.config.criterion!r}; ranked by magnitude within each "
            "token's vector",
            stacklevel=2,
        )
    gran = pruner.resolved.granularity
    for t in tables:
        pruner.attach(t, gran.select(pruner.without_pruned(t, t.matrix().abs().float()), sparsity))


def input_groups(targets: list[Target], stats: dict[str, LayerStats]) -> list[list[Target]]:
    """``targets`` grouped by the input statistics they share (q/k/v: one Hessian), the groups
    ordered by the size of that Hessian, smallest first (ties keep the targets' order)."""
    groups: dict[int, list[Target]] = {}
    for t in targets:
        inputs = stats[t.qualname].inputs
        groups.setdefault(id(inputs) if inputs is not None else id(t), []).append(t)

    def size(group: list[Target]) -> int:
        inputs = stats[group[0].qualname].inputs
        xtx = inputs.xtx if inputs is not None else None
        return 0 if xtx is None else xtx.numel()

    return sorted(groups.values(), key=size)


def prune_blockwise(pruner: Pruner, ctx: ScoreContext, sparsity: float) -> None:
    """Calibrate and prune block by block.

    1. If the allocation needs every layer's scores (``"global"``, ``"owl"``), one dense pass
       scores all layers and fixes each layer's sparsity.
    2. Block by block, the block's targets are calibrated and masked (solvers also rewrite their
       weights), and the pruned block produces the next block's inputs.
    """
    res = pruner.resolved
    check_finite(pruner.targets)
    ctx.data = as_batches(ctx.data)  # read once: a generator must serve both passes
    criterion, gran = res.criterion, res.criterion.comparison(res.granularity)
    tables = [t for t in pruner.targets if t.embedding]
    layers = [t for t in pruner.targets if not t.embedding]
    scored = res.allocation.needs_scores and layers  # the scoring pass reads every batch
    if tables and layers and not scored:  # bad data raises before the tables' masks are written
        check_batches(ctx.model, ctx.data, layers)
    budget: dict[str, float] = {t.qualname: sparsity for t in layers}
    if scored:
        units: dict[str, torch.Tensor] = {}

        def score(targets: list[Target], stats: dict[str, LayerStats]) -> bool:
            ctx.stats = stats
            units.update({t.qualname: gran.unit_scores(pruner.scores(t, ctx)) for t in targets})
            return False

        run_blockwise(ctx.model, layers, ctx.data, criterion.stats, score, progress=ctx.progress)
        budget = res.allocation.layer_sparsities(units, sparsity)
        del units
    # the tables go first, so the blocks calibrate on their pruned output
    prune_embeddings(pruner, tables, sparsity)
    if not layers:
        return

    refine = res.refine  # mask refinement (prunekit.reconstruct.refine) needs XᵀX
    kinds = criterion.stats | {"hessian"} if refine else criterion.stats
    m = res.granularity.m if isinstance(res.granularity, NM) else None

    def process(targets: list[Target], stats: dict[str, LayerStats]) -> bool:
        # one input group at a time, smallest Hessian first, each group's statistics released
        # once its layers are masked: the widest layer is solved beside its own Hessian only
        ctx.release_stats = not refine  # refine reads XᵀX after the solve
        for group in input_groups(targets, stats):
            ctx.stats = {t.qualname: stats[t.qualname] for t in group}
            wanted = {t.qualname: budget[t.qualname] for t in group}
            dense = (
                {t.qualname: t.matrix().detach().float().clone() for t in group} if refine else {}
            )
            if isinstance(criterion, Solver):
                keep = criterion.solve(group, ctx, wanted, gran)
            else:
                keep = {
                    t.qualname: gran.select(pruner.scores(t, ctx), wanted[t.qualname])
                    for t in group
                }
            for t in group:
                if refine:
                    keep[t.qualname] = refine_target(
                        t, dense.pop(t.qualname), keep[t.qualname], stats[t.qualname], m
                    )
                pruner.attach(t, keep.pop(t.qualname))
            ctx.stats = {}
            for t in group:
                del stats[t.qualname]
            release_freed_memory()  # the solve's copies, before the next group's
        ctx.release_stats = False
        return True

    # block reconstruction (prunekit.reconstruct.block): a stage after each block is masked
    run_blockwise(
        ctx.model, layers, ctx.data, kinds, process, progress=ctx.progress, after=res.reconstruct
    )
