"""REAP (router-weighted expert activation pruning, Lasby et al. 2025) for MoE experts.

An expert is as important as what it adds to the tokens routed to it: the mean, over the
calibration tokens the router sends to expert ``j``, of the router weight ``g_j(x)`` (the
top-k weight the block multiplies the expert's output by) times the L2 norm of the expert's
output ``||f_j(x)||``. An expert that no token reaches scores 0. It ranks experts
(``granularity="expert"``) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext


@CRITERIA.register("reap", examples=("reap",))
@dataclass(frozen=True)
class Reap(Criterion):
    """Mean over routed calibration tokens of router weight x expert output norm."""

    requires_data: ClassVar[bool] = True

    def supports(self, granularity: Any) -> str | None:
        if getattr(granularity, "spec", None) != "expert":
            return "reap ranks MoE experts: use granularity='expert'"
        return None

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        raise ConfigError("reap scores whole MoE experts (granularity='expert'), not weights")

    @torch.no_grad()
    def group_scores(self, group: Any, ctx: ScoreContext) -> torch.Tensor | None:
        moe = group.info.get("moe") if group.kind == "expert" else None
        if moe is None:
            return None
        total = torch.zeros(group.units, dtype=torch.float64)
        tokens = torch.zeros(group.units, dtype=torch.float64)

        def measure(module, args, kwargs, out) -> None:
            hidden, index, weights = _routing(args, kwargs)  # [T, H], [T, k], [T, k]
            for e in torch.unique(index).tolist():
                if not 0 <= e < group.units:
                    continue
                tok, slot = torch.nonzero(index == e, as_tuple=True)
                x = hidden[tok]  # [n, H]
                alone = torch.full((len(tok), 1), e, dtype=index.dtype, device=index.device)
                y = module.forward(x, alone, torch.ones_like(alone, dtype=weights.dtype))
                g = weights[tok, slot].double()
                total[e] += (g * y.double().norm(dim=-1)).sum().cpu()
                tokens[e] += len(tok)

        ctx.run_hooked([(moe.experts, measure)])
        return (total / tokens.clamp_min(1)).float()


def _routing(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden states, top-k expert ids, top-k weights) an experts module was called with."""
    names = ("hidden_states", "top_k_index", "top_k_weights")
    values = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]) :]]
    if len(values) != 3 or not all(isinstance(v, torch.Tensor) for v in values):
        raise ConfigError(
            "reap reads the routing an experts module is called with: (hidden_states, "
            "top_k_index, top_k_weights), as transformers' fused experts take it"
        )
    return values[0], values[1], values[2]
