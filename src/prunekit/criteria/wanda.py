"""Wanda (Sun et al. 2023): |W_ij| · ‖X_j‖₂, compared within each output row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..errors import ConfigError
from ..granularity import Granularity
from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext


def input_norms(target: Target, ctx: ScoreContext) -> torch.Tensor:
    """‖X_j‖₂ of each input column, broadcast to the ``[out, in]`` matrix view.

    Statistics are ``[G, in]`` (G conv groups, 1 otherwise); output row r belongs to group
    ``r // (out / G)``.
    """
    st = ctx.stats.get(target.qualname)
    if st is None or st.inputs is None or st.inputs.sumsq is None:
        raise ConfigError(f"no input statistics for {target.qualname}: calibration did not run")
    norms = st.inputs.norms()  # [G, in]
    out = target.matrix().shape[0]
    return norms.repeat_interleave(out // norms.shape[0], dim=0).to(target.weight.device)


@CRITERIA.register("wanda", examples=("wanda", {"type": "wanda", "group": "layer"}))
@dataclass(frozen=True)
class Wanda(Criterion):
    """Weight magnitude times the L2 norm of its input feature over the calibration data.

    ``group="row"`` (the paper's comparison group): for unstructured sparsity, weights compete
    within their output row, and every row of a layer loses the same number; ``"layer"``: within
    the whole layer. N:M groups lie within a row anyway.
    """

    requires_data: ClassVar[bool] = True
    stats: ClassVar[frozenset[str]] = frozenset({"norms"})
    layerwise: ClassVar[bool] = True

    group: Literal["row", "layer"] = "row"

    def comparison(self, granularity: Granularity) -> Granularity:
        return granularity.row_wise() if self.group == "row" else granularity

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return target.matrix().abs().float() * input_norms(target, ctx)
