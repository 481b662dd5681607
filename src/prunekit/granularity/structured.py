"""The base of structured granularities: whole coupled groups (channels, heads) fall together.

A structured granularity does not work weight by weight. It builds :class:`~prunekit.structure.
Group` objects for the model (through the traced dependency graph, or through the attention
adapters), scores each group's units with the criterion and zeroes the pruned units with masks;
``pk.shrink`` then removes them physically.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import Granularity


class Structured(Granularity):
    """Common options: ``round_to`` keeps every group's kept width a multiple of it; ``max_ratio``
    caps the fraction of any one group that may go."""

    structured = True
    round_to: int = 1
    max_ratio: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_options()

    def _check_options(self) -> None:
        if (
            isinstance(self.round_to, bool)
            or not isinstance(self.round_to, int)
            or self.round_to < 1
        ):
            raise ConfigError(f"round_to must be an integer >= 1, got {self.round_to!r}")
        if not isinstance(self.max_ratio, (int, float)) or not 0.0 < self.max_ratio <= 1.0:
            raise ConfigError(f"max_ratio must be in (0, 1], got {self.max_ratio!r}")

    @abstractmethod
    def groups(self, model: nn.Module, example_inputs: Any) -> list[Any]:
        """The prunable groups of ``model`` (a list of :class:`~prunekit.structure.Group`)."""

    def check_choice(self, groups: list[Any], pruned: list[torch.Tensor]) -> None:
        """Raise :class:`~prunekit.errors.ConfigError` if pruning the ``pruned`` units (a bool
        ``[units]`` per group) would break the model; called before any mask is applied."""

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"granularity {self.spec!r} prunes groups, not single weights")

    def expand(self, unit_keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        raise ConfigError(f"granularity {self.spec!r} prunes groups, not single weights")

    def select(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        raise ConfigError(f"granularity {self.spec!r} prunes groups, not single weights")
