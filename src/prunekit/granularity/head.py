"""Attention heads: q/k/v/o sliced consistently, GQA query heads removed evenly per KV group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..errors import TargetError
from .base import GRANULARITIES
from .structured import Structured


@GRANULARITIES.register("head")
@dataclass(frozen=True)
class Head(Structured):
    """Attention heads. With GQA, query heads go evenly per KV group; ``kv_groups=True`` removes
    whole KV groups (with their query heads) instead."""

    examples: ClassVar[tuple] = ("head", {"type": "head", "kv_groups": True, "uniform": True})

    round_to: int = 1
    max_ratio: float = 1.0
    uniform: bool = False
    kv_groups: bool = False

    @classmethod
    def from_spec(cls, spec: str) -> Head | None:
        return cls() if spec in ("head", "heads") else None

    @property
    def spec(self) -> str:
        return "head"

    def groups(self, model: nn.Module, example_inputs: Any) -> list[Any]:
        from ..structure.heads import head_groups

        groups = head_groups(
            model, kv_groups=self.kv_groups, example_inputs=example_inputs, refuse=True
        )
        if not groups:
            raise TargetError(
                f"{type(model).__name__} has no attention module that prunekit knows how to "
                "prune by head (see prunekit.structure.heads.HEAD_ADAPTERS)"
            )
        return groups
