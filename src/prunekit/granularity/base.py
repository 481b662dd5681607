"""The granularity contract: group element scores into units, pick units, expand to a mask."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ..plugin import Plugin, from_value
from ..registry import Registry
from ..targets import Target

GRANULARITIES: Registry[type[Granularity]] = Registry("granularity")


class Granularity(Plugin, ABC):
    """Which weights fall together. Works on the ``[out, in]`` matrix view of a weight.

    Subclasses are frozen dataclasses (their fields are the options) with a spec string.
    ``fixed_sparsity`` is set where the pattern itself fixes the sparsity (N:M).
    """

    fixed_sparsity: float | None = None
    #: number of weights in one unit
    unit_size: int = 1
    #: True for granularities that prune coupled groups (channels, heads) through the model's
    #: structure instead of one weight at a time; see :mod:`prunekit.granularity.structured`
    structured: bool = False
    #: False where units are not whole layers' rows and columns (MoE experts): criteria that
    #: read per-layer activation statistics (``Criterion.stats``) cannot rank them
    layer_statistics: bool = True
    #: specs the registry-driven contract tests exercise
    examples: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: str) -> Granularity | None:
        """Parse a spec such as ``"2:4"``; None when the spec is not of this kind."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """The canonical spec string, e.g. ``"2:4"`` or ``"block:4x4"``."""

    def check(self, target: Target) -> None:
        """Raise :class:`~prunekit.errors.WeightError` if the weight's shape does not fit."""

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Element scores ``[out, in]`` summed into unit scores (any shape); here units are
        single weights."""
        return scores

    def expand(self, unit_keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """A boolean unit mask (shape of :meth:`unit_scores`) back to an ``[out, in]`` mask."""
        return unit_keep.reshape(shape)

    def row_wise(self) -> Granularity:
        """This granularity with units competing within each output row, where it can."""
        return self

    def select(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        """Layer scope: prune the ``round(sparsity * units)`` lowest-scoring units.

        ``scores`` is ``[out, in]``; already-pruned weights carry ``-inf``. Ties break by position.
        Returns a boolean keep-mask ``[out, in]``.
        """
        units = self.unit_scores(scores)
        return self.expand(prune_lowest(units, round(sparsity * units.numel())), scores.shape)

    def __str__(self) -> str:
        return self.spec


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A keep-mask shaped like ``scores`` that drops its ``k`` lowest entries (stable ties)."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.shape, dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.argsort(flat, stable=True)[:k]] = False
    return keep.view(scores.shape)


def _from_spec(spec: str) -> Granularity | None:
    for name in GRANULARITIES:
        parsed = GRANULARITIES.get(name).from_spec(spec.strip())
        if parsed is not None:
            return parsed
    return None


def parse_granularity(value: str | dict | Granularity) -> Granularity:
    """A granularity from its spec (``"unstructured"``, ``"2:4"``, ``"block:4x4"``, ...), its
    dict (``{"type": "channel", "round_to": 8}``) or itself."""
    return from_value(value, GRANULARITIES, Granularity, parse=_from_spec)
