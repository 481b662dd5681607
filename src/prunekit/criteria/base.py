"""The criterion contract: how important is each weight?"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..granularity import Granularity
from ..plugin import Plugin
from ..registry import Registry
from ..targets import Target

CRITERIA: Registry[type[Criterion]] = Registry("criterion")


@dataclass
class ScoreContext:
    """What a criterion may use besides the weight itself."""

    model: nn.Module
    seed: int = 0
    #: calibration batches, for data-aware criteria
    data: Iterable[Any] | None = None
    #: per-target statistics gathered by :meth:`Criterion.collect`, keyed by ``Target.qualname``
    stats: dict[str, Any] = field(default_factory=dict)
    #: ``loss_fn(output, batch) -> scalar`` for gradient criteria; None: the model's own loss
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    #: show progress bars while calibrating
    progress: bool = False
    #: the caller reads no target's statistics after :meth:`Solver.solve`: a solver may free
    #: them as soon as it is done with them (SparseGPT frees XᵀX once its factor is built)
    release_stats: bool = False

    @torch.no_grad()
    def run_hooked(self, hooks: list[tuple[nn.Module, Callable[..., None]]]) -> None:
        """Run the model over the calibration data (eval mode, no KV cache) with each
        ``(module, hook)``'s forward hook ``hook(module, args, kwargs, output)`` attached."""
        from ..calibrate import as_batches, calibration_mode, run_batch

        handles = [m.register_forward_hook(h, with_kwargs=True) for m, h in hooks]
        try:
            with calibration_mode(self.model):
                device = next(self.model.parameters()).device
                for n, batch in enumerate(as_batches(self.data)):
                    run_batch(self.model, batch, n, device)
        finally:
            for h in handles:
                h.remove()

    def generator(self, target: Target) -> torch.Generator:
        """A generator seeded from the run's seed and the target's name (deterministic)."""
        gen = torch.Generator(device=target.weight.device)
        gen.manual_seed(self.seed * 1_000_003 + zlib.crc32(target.qualname.encode()))
        return gen


class Criterion(Plugin, ABC):
    """Scores weights; higher means more important. Scores are summed within a unit.

    Subclasses are frozen dataclasses whose fields are the criterion's parameters.
    """

    #: True when the criterion needs calibration ``data``
    requires_data: ClassVar[bool] = False
    #: calibration statistics the criterion reads (see :mod:`prunekit.calibrate`)
    stats: ClassVar[frozenset[str]] = frozenset()
    #: True when those statistics are per-layer, so the block runner can gather them block by
    #: block and prune each block before calibrating the next (see :mod:`prunekit.execute`)
    layerwise: ClassVar[bool] = False

    def supports(self, granularity: Granularity) -> str | None:
        """Why this criterion cannot serve ``granularity``, or None if it can."""
        if self.stats and not granularity.layer_statistics:
            return (
                f"{granularity.spec} units are not rows or columns of layers, so the per-layer "
                "activation statistics this criterion reads cannot rank them; use a weight "
                "criterion (magnitude, l2, taylor, ...) or the unit's own (e.g. reap for experts)"
            )
        return None

    def comparison(self, granularity: Granularity) -> Granularity:
        """The granularity units are selected with (Wanda: within each output row)."""
        return granularity

    def collect(self, targets: list[Target], ctx: ScoreContext) -> None:
        """Gather statistics into ``ctx.stats`` before scoring (data-aware criteria).

        The default runs whole-model forward hooks for the :attr:`stats` this criterion names.
        """
        if self.stats:
            from ..calibrate import collect

            ctx.stats.update(collect(ctx.model, targets, ctx.data, self.stats, ctx.progress))

    @abstractmethod
    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        """Element scores as an ``[out, in]`` matrix (see :meth:`Target.to_matrix`)."""

    # -- structured pruning hooks (see prunekit.structure.select.unit_scores) ------------------
    def channel_scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor | None:
        """Optional: one score per *output channel* of ``target`` ``[out]``.

        The hook for activation criteria (APoZ, mean activation) and filter criteria (FPGM).
        Where a criterion gives it, structured pruning scores a unit by the sum of the channel
        scores of the group's producing layers (the output-channel slices), instead of reducing
        :meth:`scores` over every member. Statistics gathered in :meth:`collect` (forward hooks
        on the targets) belong in ``ctx.stats``. The default None means "reduce scores()".
        """
        return None

    def slice_scores(self, target: Target, ctx: ScoreContext, dim: int) -> torch.Tensor | None:
        """Optional: :meth:`scores` summed over every slice of ``target``'s weight along its
        dimension ``dim`` (the weight's own layout) ``[size]``, computed without a full-size
        score tensor (magnitude: a norm per slice). None (the default) reduces :meth:`scores`."""
        return None

    def group_scores(self, group: Any, ctx: ScoreContext) -> torch.Tensor | None:
        """Optional: the importance of every unit of a :class:`~prunekit.structure.Group`
        ``[units]``, for criteria that look at the group as a whole (BN scaling). None (the
        default) sums the member slices' scores."""
        return None


class Solver(Criterion):
    """A criterion that chooses each layer's mask and rewrites its remaining weights to keep the
    layer's outputs (SparseGPT, regression).

    Solvers run through the block runner: block i is solved before block i+1 is calibrated on
    its outputs. :meth:`scores` is still defined; it gives the cross-layer allocations
    (``scope="global"``, ``"owl"``) something to rank.
    """

    requires_data: ClassVar[bool] = True
    layerwise: ClassVar[bool] = True

    @abstractmethod
    def solve(
        self,
        targets: list[Target],
        ctx: ScoreContext,
        sparsities: dict[str, float],
        granularity: Granularity,
    ) -> dict[str, torch.Tensor]:
        """Boolean keep-masks ``[out, in]`` by ``Target.qualname``; weights rewritten in place.

        ``ctx.stats`` holds the targets' calibration statistics; ``sparsities`` each target's
        sparsity. Weights already masked must stay pruned.
        """
