"""N:M: at most N non-zeros in every M consecutive weights along the input dimension."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError, WeightError
from ..targets import Target
from .base import GRANULARITIES, Granularity

_SPEC = re.compile(r"(\d+):(\d+)")


@GRANULARITIES.register("N:M")
@dataclass(frozen=True)
class NM(Granularity):
    """Keep the N best of every M consecutive input weights (NVIDIA 2:4 for ``NM(2, 4)``)."""

    examples: ClassVar[tuple[str, ...]] = ("2:4", "1:4", "4:8")

    n: int
    m: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or not 0 < self.n < self.m:
            raise ConfigError(f"malformed N:M pattern {self.n}:{self.m}: need integers 0 < N < M")

    @classmethod
    def from_spec(cls, spec: str) -> NM | None:
        match = _SPEC.fullmatch(spec)
        return cls(int(match[1]), int(match[2])) if match else None

    @property
    def spec(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def fixed_sparsity(self) -> float:  # type: ignore[override]
        return 1.0 - self.n / self.m

    def check(self, target: Target) -> None:
        cols = target.matrix().shape[1]
        if cols % self.m:
            raise WeightError(
                f"{target.qualname}: input dimension {cols} is not a multiple of M={self.m} "
                f"for {self.spec}; exclude this layer or pick an M that divides it"
            )

    def select(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        """Keep ``max(N, M - floor(sparsity*M))`` per group, so a schedule can pass 3:4 on the way
        to 2:4; at the final sparsity ``1 - N/M`` this keeps exactly N."""
        keep_n = max(self.n, self.m - math.floor(sparsity * self.m + 1e-9))
        groups = scores.reshape(scores.shape[0], -1, self.m)  # [out, in/M, M]
        order = torch.argsort(groups, dim=-1, descending=True, stable=True)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, order[..., :keep_n], True)
        return keep.reshape(scores.shape)

    def holds(self, matrix: torch.Tensor) -> bool:
        """True if every group of M along the input dimension has at most N non-zeros."""
        if matrix.shape[-1] % self.m:
            return False
        nnz = (matrix.reshape(matrix.shape[0], -1, self.m) != 0).sum(-1)
        return bool((nnz <= self.n).all())
