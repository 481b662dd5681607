"""Unstructured: every weight is its own unit."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .base import GRANULARITIES, Granularity


@GRANULARITIES.register("unstructured")
@dataclass(frozen=True)
class Unstructured(Granularity):
    """Single weights. With ``per_row=True`` every output row gets the same sparsity (Wanda)."""

    examples: ClassVar[tuple] = ("unstructured", {"type": "unstructured", "per_row": True})

    per_row: bool = False

    @classmethod
    def from_spec(cls, spec: str) -> Unstructured | None:
        return cls() if spec == "unstructured" else None

    @property
    def spec(self) -> str:
        return "unstructured"

    def row_wise(self) -> Unstructured:
        return replace(self, per_row=True)

    def select(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        if not self.per_row:
            return super().select(scores, sparsity)
        # round(sparsity * numel) in all, spread over the rows: the first rows take one more
        rows, cols = scores.shape
        base, extra = divmod(round(sparsity * scores.numel()), rows)
        k = torch.full((rows, 1), base, device=scores.device)
        k[:extra] += 1
        drop = torch.arange(cols, device=scores.device) < k  # [rows, cols], in score order
        keep = torch.empty_like(scores, dtype=torch.bool)
        return keep.scatter_(1, torch.argsort(scores, dim=1, stable=True), ~drop)
