"""Unstructured: every weight is its own unit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import GRANULARITIES, Granularity


@GRANULARITIES.register("unstructured")
@dataclass(frozen=True)
class Unstructured(Granularity):
    """Single weights. With ``per_row=True`` every output row gets the same sparsity (Wanda)."""

    examples: ClassVar[tuple[str, ...]] = ("unstructured",)

    per_row: bool = False

    @classmethod
    def from_spec(cls, spec: str) -> Unstructured | None:
        return cls() if spec == "unstructured" else None

    @property
    def spec(self) -> str:
        return "unstructured"

    def select(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        if not self.per_row:
            return super().select(scores, sparsity)
        k = round(sparsity * scores.shape[1])
        keep = torch.ones_like(scores, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :k], False)
        return keep
