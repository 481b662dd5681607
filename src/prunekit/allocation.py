"""Allocation: how the sparsity budget is spread over the targeted layers (``scope=``)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .errors import ConfigError
from .granularity import Granularity, prune_lowest
from .registry import Registry

ALLOCATIONS: Registry[type[Allocation]] = Registry("scope")


class Allocation(ABC):
    """Turns per-layer element scores into per-layer keep-masks at an overall sparsity."""

    #: True when each layer's sparsity is set before its masks are chosen, so units may compete
    #: within a layer (or a row, for per-row criteria such as Wanda)
    layerwise: bool = False
    #: True when per-layer sparsities depend on the scores of every layer (a dense pre-pass)
    needs_scores: bool = True

    def check(self, granularity: Granularity) -> None:
        """Raise :class:`ConfigError` if this allocation cannot serve ``granularity``."""

    @abstractmethod
    def masks(
        self, scores: dict[str, torch.Tensor], sparsity: float, granularity: Granularity
    ) -> dict[str, torch.Tensor]:
        """``scores`` maps names to ``[out, in]`` scores (``-inf`` where already pruned)."""

    def layer_sparsities(
        self, scores: dict[str, torch.Tensor], sparsity: float, granularity: Granularity
    ) -> dict[str, float]:
        """Each layer's sparsity, for the block runner, which masks one block at a time."""
        return {
            name: 1.0 - int(m.sum()) / m.numel()
            for name, m in self.masks(scores, sparsity, granularity).items()
        }


@ALLOCATIONS.register("layer")
class LayerUniform(Allocation):
    """Every targeted layer gets the same sparsity."""

    layerwise = True
    needs_scores = False

    def masks(self, scores, sparsity, granularity):
        return {name: granularity.select(s, sparsity) for name, s in scores.items()}


@ALLOCATIONS.register("global")
class GlobalThreshold(Allocation):
    """One threshold on the unit scores of all targeted layers together."""

    def check(self, granularity: Granularity) -> None:
        if granularity.fixed_sparsity is not None:
            raise ConfigError(
                f"scope='global' does not apply to {granularity.spec}: the pattern fixes every "
                "group's sparsity; use scope='layer'"
            )

    def masks(self, scores, sparsity, granularity):
        units = {name: granularity.unit_scores(s) for name, s in scores.items()}
        flat = torch.cat([u.reshape(-1).float().cpu() for u in units.values()])
        keep = prune_lowest(flat, round(sparsity * flat.numel()))
        out, start = {}, 0
        for name, u in units.items():
            part = keep[start : start + u.numel()].view(u.shape).to(u.device)
            out[name] = granularity.expand(part, scores[name].shape)
            start += u.numel()
        return out


def get_allocation(scope: str) -> Allocation:
    return ALLOCATIONS.get(scope)()
