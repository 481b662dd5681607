"""``outputs``: zero-rate and mean of each output channel's post-activation output (APoZ,
mean-activation)."""

from __future__ import annotations

import torch

from .base import STATISTICS, Statistic, accumulate


@STATISTICS.register("outputs")
class Outputs(Statistic):
    """``zeros`` and ``total`` ``[out]`` float64: count of outputs <= 0 and their sum."""

    source = "output"
    examples = (("linear", (2, 5, 8)), ("conv2d", (2, 3, 6, 6)))

    @staticmethod
    def add(values: dict[str, torch.Tensor], rows: torch.Tensor) -> None:  # rows: [N, out]
        accumulate(values, "zeros", (rows <= 0).sum(0).double())
        accumulate(values, "total", rows.sum(0).double())
