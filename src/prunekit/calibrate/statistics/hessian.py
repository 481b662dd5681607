"""``hessian``: XᵀX of a layer's input (SparseGPT, regression), accumulated in float64.

Float64 accumulation makes the sum independent of how the matrix product is split across
threads (the float32 rounding of a sum of thousands of products differs with the split order,
and SparseGPT's masks followed it). Its diagonal also serves ``norms``.
"""

from __future__ import annotations

import torch

from .base import STATISTICS, Statistic, accumulate


@STATISTICS.register("hessian")
class Hessian(Statistic):
    """``xtx`` ``[G, cols, cols]``: Σ over rows of xᵀx, float64."""

    source = "input"
    examples = (("linear", (2, 5, 8)), ("conv2d", (2, 3, 6, 6)))

    @staticmethod
    def add(values: dict[str, torch.Tensor], rows: torch.Tensor) -> None:
        cols = rows.double()  # [G, N, cols]
        accumulate(values, "xtx", cols.transpose(1, 2) @ cols)
