"""``hessian``: XᵀX of a layer's input (SparseGPT, regression); its diagonal also serves
``norms``. Float32: the product rounds the same on any thread count (the reduction is not split
across threads), which the SparseGPT thread-count test checks end to end."""

from __future__ import annotations

import torch

from .base import STATISTICS, Statistic, accumulate


@STATISTICS.register("hessian")
class Hessian(Statistic):
    """``xtx`` ``[G, cols, cols]``: Σ over rows of xᵀx."""

    source = "input"
    examples = (("linear", (2, 5, 8)), ("conv2d", (2, 3, 6, 6)))

    @staticmethod
    def add(values: dict[str, torch.Tensor], rows: torch.Tensor) -> None:
        if "xtx" in values:
            values["xtx"].baddbmm_(rows.transpose(1, 2), rows)  # [G, cols, N] @ [G, N, cols]
        else:
            accumulate(values, "xtx", rows.transpose(1, 2) @ rows)
