"""``scope="layer"``: every layer gets the same sparsity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..granularity import Granularity
from .base import ALLOCATIONS, Allocation


@ALLOCATIONS.register("layer")
@dataclass(frozen=True)
class Layer(Allocation):
    """The same sparsity in every layer (every channel or head group, for structured pruning)."""

    examples: ClassVar[tuple] = ("layer",)
    needs_scores: ClassVar[bool] = False

    def supports(self, granularity: Granularity) -> str | None:
        return None

    def layer_sparsities(self, units, sparsity):
        return {name: sparsity for name in units}
