"""Layer-wise one-shot pruning: drives the block runner for data-aware, per-layer criteria.

For a criterion with ``layerwise = True`` (Wanda, SparseGPT, regression, APoZ, ...), the
:class:`~prunekit.pruner.Pruner` hands over to :func:`prune_layerwise`:

1. if the allocation needs every layer's scores to set per-layer sparsities (``"global"``,
   ``"owl"``), one dense calibration pass scores all layers and fixes each layer's sparsity;
2. then, block by block, the block's targets are calibrated, masked (solvers also rewrite their
   weights) and the pruned block produces the next block's inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .calibrate import LayerStats, as_batches, run_blockwise
from .criteria import ScoreContext
from .granularity import Granularity
from .granularity.nm import NM
from .reconstruct import Solver
from .reconstruct.refine import refine_target
from .targets import Target

if TYPE_CHECKING:
    from .pruner import Pruner


def prune_layerwise(
    pruner: Pruner, ctx: ScoreContext, sparsity: float, granularity: Granularity
) -> None:
    """Prune ``pruner``'s targets to ``sparsity`` block by block (see the module docstring)."""
    res = pruner.resolved
    criterion, allocation = res.criterion, res.allocation
    run = {"progress": pruner.progress}
    ctx.data = as_batches(ctx.data)  # read once: a generator must serve both passes
    budget: dict[str, float] | None = None
    if allocation.needs_scores:
        scores: dict[str, torch.Tensor] = {}

        def score(targets: list[Target], stats: dict[str, LayerStats]) -> bool:
            ctx.stats = stats
            scores.update({t.qualname: pruner.scores(t, ctx) for t in targets})
            return False

        run_blockwise(ctx.model, pruner.targets, ctx.data, criterion.stats, score, **run)
        budget = allocation.layer_sparsities(scores, sparsity, granularity)
        del scores

    refine = bool(getattr(pruner.config, "refine", False))  # prunekit.reconstruct.refine
    kinds = criterion.stats | {"hessian"} if refine else criterion.stats

    def process(targets: list[Target], stats: dict[str, LayerStats]) -> bool:
        ctx.stats = stats
        target_sparsity = {
            t.qualname: sparsity if budget is None else budget[t.qualname] for t in targets
        }
        dense = {t.qualname: t.matrix().detach().float().clone() for t in targets} if refine else {}
        if isinstance(criterion, Solver):
            keep = criterion.solve(targets, ctx, target_sparsity, granularity)
        else:
            keep = {
                t.qualname: granularity.select(pruner.scores(t, ctx), target_sparsity[t.qualname])
                for t in targets
            }
        for t in targets:
            if refine:
                m = granularity.m if isinstance(granularity, NM) else None
                keep[t.qualname] = refine_target(
                    t, dense.pop(t.qualname), keep[t.qualname], stats[t.qualname], m
                )
            pruner.attach(t, keep[t.qualname])
        ctx.stats = {}
        return True

    # block reconstruction (prunekit.reconstruct.block): a per-block stage of the runner
    after = getattr(pruner.config, "reconstruct", None)
    run_blockwise(ctx.model, pruner.targets, ctx.data, kinds, process, after=after, **run)
