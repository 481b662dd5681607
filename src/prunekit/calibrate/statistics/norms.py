"""``norms``: Σ x_j² per input column (Wanda's ‖X_j‖₂²); the Hessian's diagonal when both run."""

from __future__ import annotations

import torch

from .base import STATISTICS, Statistic, accumulate


@STATISTICS.register("norms")
class Norms(Statistic):
    """``sq`` ``[G, cols]``: Σ over rows of x², float32."""

    source = "input"
    implied_by = frozenset({"hessian"})
    examples = (("linear", (2, 5, 8)), ("conv1d", (2, 3, 9)))

    @staticmethod
    def add(values: dict[str, torch.Tensor], rows: torch.Tensor) -> None:
        accumulate(values, "sq", rows.square().sum(1))  # [G, N, cols] -> [G, cols]
