"""MoE experts: whole experts of mixture-of-experts blocks removed (expert pruning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import TargetError
from .base import GRANULARITIES
from .structured import Structured


@GRANULARITIES.register("expert")
@dataclass(frozen=True)
class Expert(Structured):
    """Whole routed experts of every MoE block (fused 3-D expert weights and the router's rows;
    shared experts stay). ``sparsity`` is the fraction of each block's experts removed
    (``scope="layer"``: the same count in every block). Rank them with ``criterion="reap"``
    (router-weighted expert activation) or any weight criterion summed over the expert. A
    block is never left fewer experts than its top-k (refused before any mask)."""

    examples: ClassVar[tuple] = ("expert",)
    layer_statistics: ClassVar[bool] = False

    round_to: int = 1
    max_ratio: float = 1.0

    @classmethod
    def from_spec(cls, spec: str) -> Expert | None:
        return cls() if spec in ("expert", "experts") else None

    @property
    def spec(self) -> str:
        return "expert"

    def groups(self, model: nn.Module, example_inputs: Any) -> list[Any]:
        from ..structure.experts import expert_groups

        groups = expert_groups(model)
        if not groups:
            raise TargetError(
                f"{type(model).__name__} has no mixture-of-experts block that prunekit can prune "
                "by expert (an experts module with 3-D weights [experts, ...] and a num_experts "
                "attribute, next to a router with one weight row per expert)"
            )
        return groups

    def check_choice(self, groups: list[Any], pruned: list[torch.Tensor]) -> None:
        from ..structure.experts import check_top_k

        check_top_k(groups, pruned)
