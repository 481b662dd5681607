"""``scope="global"``: one threshold on the unit scores of all layers together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..errors import ConfigError
from .base import ALLOCATIONS, Allocation, layer_limits, warn_capped


@ALLOCATIONS.register("global")
@dataclass(frozen=True)
class Global(Allocation):
    """Prune the units with the lowest scores over all layers together.

    ``normalize="mean"`` divides each layer's scores by their mean magnitude first (scores of
    differently sized channel groups are then comparable); ``"none"`` (the default) compares raw
    scores, the classic global magnitude pruning. No layer loses more than
    ``max_layer_sparsity`` of its units, nor all of them: where that cap binds, the budget goes
    to the next-lowest units elsewhere, with a warning naming the layer.
    """

    examples: ClassVar[tuple] = (
        "global",
        {"type": "global", "normalize": "mean", "max_layer_sparsity": 0.9},
    )

    normalize: Literal["none", "mean"] = "none"
    max_layer_sparsity: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.max_layer_sparsity <= 1.0:
            raise ConfigError(
                f"max_layer_sparsity must be in (0, 1], got {self.max_layer_sparsity!r}"
            )

    def layer_sparsities(self, units, sparsity):
        names = list(units)
        flat = [self._scaled(units[n].reshape(-1).float().cpu()) for n in names]
        total = round(sparsity * sum(f.numel() for f in flat))
        limits = layer_limits(units, self.max_layer_sparsity)
        # every layer's candidates are its `limit` lowest units; the `total` lowest candidates go
        candidates = [
            torch.sort(f, stable=True).values[: limits[n]] for n, f in zip(names, flat, strict=True)
        ]
        pool = torch.cat(candidates)
        if total > pool.numel():
            raise ConfigError(
                f"sparsity {sparsity:g} needs {total} units but the per-layer cap "
                f"max_layer_sparsity={self.max_layer_sparsity:g} allows {pool.numel()}; lower "
                "the sparsity or raise the cap"
            )
        chosen = torch.zeros(pool.numel(), dtype=torch.bool)
        chosen[torch.argsort(pool, stable=True)[:total]] = True
        out, capped, start = {}, [], 0
        threshold = torch.sort(torch.cat(flat), stable=True).values[total - 1] if total else None
        for n, f, c in zip(names, flat, candidates, strict=True):
            count = int(chosen[start : start + c.numel()].sum())
            start += c.numel()
            if count == limits[n] and threshold is not None and int((f <= threshold).sum()) > count:
                capped.append(n)
            out[n] = count / f.numel()
        warn_capped(capped, self.max_layer_sparsity)
        return out

    def _scaled(self, scores: torch.Tensor) -> torch.Tensor:
        if self.normalize == "none":
            return scores
        live = scores[torch.isfinite(scores)]
        mean = live.abs().mean() if live.numel() else scores.new_ones(())
        return scores / mean if mean > 0 else scores
