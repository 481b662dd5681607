"""The allocation contract: per-layer unit scores in, per-layer sparsities out."""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod

import torch

from ..granularity import Granularity
from ..plugin import Plugin
from ..registry import Registry

ALLOCATIONS: Registry[type[Allocation]] = Registry("scope")


class Allocation(Plugin, ABC):
    """Spreads an overall sparsity over layers (for structured pruning: over groups).

    A "layer" is whatever the granularity prunes within: a weight matrix, or a channel / head
    group. :meth:`layer_sparsities` sees every layer's *unit* scores (any shape; ``-inf`` where a
    unit is already pruned) and returns each layer's sparsity such that
    ``round(sparsity * units)`` units are pruned in it, and the total over all layers is
    ``round(overall * all units)``.
    """

    #: True when a layer's sparsity depends on other layers' scores, so block-by-block pruning
    #: needs a dense scoring pre-pass over the whole model first
    needs_scores: bool = True

    def supports(self, granularity: Granularity) -> str | None:
        """Why this allocation cannot serve ``granularity``, or None if it can."""
        if granularity.fixed_sparsity is not None:
            return (
                f"the pattern {granularity.spec} fixes every group's sparsity, so it cannot be "
                "spread unevenly over layers; use scope='layer'"
            )
        return None

    @abstractmethod
    def layer_sparsities(self, units: dict[str, torch.Tensor], sparsity: float) -> dict[str, float]:
        """Each layer's sparsity (an exact count of its units) for an overall ``sparsity``."""


def exact_counts(wanted: torch.Tensor, total: int, limit: torch.Tensor) -> list[int]:
    """Integers near ``wanted`` (each in [0, limit]) that sum to ``total``: largest remainder.

    ``total`` must not exceed ``limit.sum()``.
    """
    wanted = wanted * (total / float(wanted.sum())) if float(wanted.sum()) > 0 else wanted
    counts = wanted.floor().clamp(min=0).minimum(limit)
    short = total - int(counts.sum())
    order = torch.argsort(wanted - counts, descending=True, stable=True).tolist()
    while short > 0:
        room = [j for j in order if counts[j] < limit[j]]
        for j in room[:short]:
            counts[j] += 1
        short -= len(room[:short])
    return [int(c) for c in counts]


def layer_limits(units: dict[str, torch.Tensor], cap: float) -> dict[str, int]:
    """How many units each layer may lose at most: ``floor(cap * n)``, and never all ``n``."""
    return {
        name: min(math.floor(cap * u.numel() + 1e-9), u.numel() - 1) for name, u in units.items()
    }


def warn_capped(capped: list[str], cap: float) -> None:
    """Say which layers the per-layer cap held back (the rest of the budget went elsewhere)."""
    if capped:
        shown = ", ".join(capped[:5]) + (f" and {len(capped) - 5} more" if len(capped) > 5 else "")
        warnings.warn(
            f"the allocation would have pruned {shown} (almost) entirely; capped at "
            f"{cap:g} of its units and spread the rest of the budget over the other layers",
            stacklevel=4,
        )
