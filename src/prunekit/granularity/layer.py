"""Whole layers: transformer blocks (or residual blocks) removed one by one (depth pruning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from .base import GRANULARITIES
from .structured import Structured


@GRANULARITIES.register("layer")
@dataclass(frozen=True)
class Layer(Structured):
    """Whole blocks of the model's longest list of same-typed blocks. A block goes only where
    it computes the identity with zero weights (pre-norm residual blocks); ``sparsity`` is the
    fraction of blocks removed. Rank them with ``criterion="block-influence"`` (ShortGPT) or any
    criterion summed over the block."""

    examples: ClassVar[tuple] = ("layer",)

    round_to: int = 1
    max_ratio: float = 1.0

    @classmethod
    def from_spec(cls, spec: str) -> Layer | None:
        return cls() if spec in ("layer", "layers", "depth") else None

    @property
    def spec(self) -> str:
        return "layer"

    def groups(self, model: nn.Module, example_inputs: Any) -> list[Any]:
        from ..structure.layers import layer_group

        return [layer_group(model, example_inputs)]
