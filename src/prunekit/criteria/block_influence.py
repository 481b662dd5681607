"""Block influence (ShortGPT, Men et al. 2024): how much a block changes its input.

A block's importance is the mean over calibration tokens of ``1 - cos(h_in, h_out)`` between
the hidden states entering and leaving it; the blocks that change them least go first. It
ranks whole layers (``granularity="layer"``) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..calibrate import first_output, hidden_key
from ..errors import ConfigError
from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext


@CRITERIA.register("block-influence", examples=("block-influence",))
@dataclass(frozen=True)
class BlockInfluence(Criterion):
    """``1 - cos(input, output)`` of each block, averaged over calibration tokens."""

    requires_data: ClassVar[bool] = True

    def supports(self, granularity: Any) -> str | None:
        if getattr(granularity, "spec", None) != "layer":
            return "block-influence ranks whole layers: use granularity='layer'"
        return None

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        raise ConfigError("block-influence scores whole layers (granularity='layer'), not weights")

    @torch.no_grad()
    def group_scores(self, group: Any, ctx: ScoreContext) -> torch.Tensor | None:
        blocks = group.info.get("blocks") if group.kind == "layer" else None
        if blocks is None:
            return None
        total = torch.zeros(len(blocks), dtype=torch.float64)
        tokens = torch.zeros(len(blocks), dtype=torch.float64)

        def measure(i: int):
            def hook(module, args, kwargs, out) -> None:
                key = hidden_key(args, kwargs)
                h_in = (args[key] if isinstance(key, int) else kwargs[key]).flatten(0, -2)
                h_out = first_output(out).flatten(0, -2)  # [tokens, hidden]
                cos = torch.nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
                total[i] += (1 - cos).sum().cpu()
                tokens[i] += cos.numel()

            return hook

        ctx.run_hooked([(b, measure(i)) for i, b in enumerate(blocks)])
        return (total / tokens.clamp_min(1)).float()
