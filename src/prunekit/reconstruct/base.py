"""The solver contract: a criterion that picks masks while reconstructing the kept weights."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from ..criteria.base import Criterion, ScoreContext
from ..granularity import Granularity
from ..targets import Target


class Solver(Criterion):
    """Chooses each layer's mask and rewrites its remaining weights to keep the layer's outputs.

    Solvers always run through the block runner (:mod:`prunekit.oneshot`): block i is solved
    before block i+1 is calibrated on its outputs. :meth:`scores` is still defined; it gives the
    cross-layer allocations (``scope="global"``, ``"owl"``) something to rank.
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
