"""Block influence (ShortGPT, Men et al. 2024): how much a block changes its input.

A block's importance is the mean over calibration tokens of ``1 - cos(h_in, h_out)`` between
the hidden states entering and leaving it; the blocks that change them least go first. It
ranks whole layers (``granularity="layer"``) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..calibrate import _first_output, _hidden_key, as_batches, calibration_mode, run_batch
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
                key = _hidden_key(args, kwargs)
                h_in = (args[key] if isinstance(key, int) else kwargs[key]).flatten(0, -2)
                h_out = _first_output(out).flatten(0, -2)  # [tokens, hidden]
                cos = torch.nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
                total[i] += (1 - cos).sum().cpu()
                tokens[i] += cos.numel()

            return hook

        handles = [
            b.register_forward_hook(measure(i), with_kwargs=True) for i, b in enumerate(blocks)
        ]
        try:
            with calibration_mode(ctx.model):
                device = next(ctx.model.parameters()).device
                for n, batch in enumerate(as_batches(ctx.data)):
                    run_batch(ctx.model, batch, n, device)
        finally:
            for h in handles:
                h.remove()
        return (total / tokens.clamp_min(1)).float()
