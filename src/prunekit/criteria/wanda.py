"""Wanda (Sun et al. 2023): |W_ij| · ‖X_j‖₂, compared within each output row."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import ConfigError
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


@CRITERIA.register("wanda")
class Wanda(Criterion):
    """Weight magnitude times the L2 norm of its input feature over the calibration data.

    Units compete within their output row (``per_row``) for unstructured sparsity at layer
    scope; N:M groups lie within a row anyway.
    """

    requires_data: ClassVar[bool] = True
    per_row: ClassVar[bool] = True
    stats: ClassVar[frozenset[str]] = frozenset({"norms"})
    layerwise: ClassVar[bool] = True

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return target.matrix().abs().float() * input_norms(target, ctx)
