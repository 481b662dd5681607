"""Allocation: how the sparsity budget is spread over the targeted layers (``scope=``)."""

from __future__ import annotations

import re
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


@ALLOCATIONS.register("owl")
class OWL(Allocation):
    """Outlier-weighted layerwise sparsity (Yin et al. 2024), for Wanda and SparseGPT.

    A block's outlier ratio D is the fraction of its scores above ``M`` times their mean (the
    scores are |W|·‖X‖ for both criteria). Ratios are rescaled to [0, 2λ]; blocks with more
    outliers keep more weights: sparsity_b = sparsity − (D̃_b − mean D̃), the mean weighted by
    parameter count so that the total is exact. A block is the group of layers under one index of
    a repeated list (``encoder.layer.3.*``); layers outside any list are their own group.
    """

    layerwise = True
    outlier_m: float = 5.0
    lam: float = 0.08

    def check(self, granularity: Granularity) -> None:
        if granularity.fixed_sparsity is not None:
            raise ConfigError(
                f"scope='owl' does not apply to {granularity.spec}: the pattern fixes every "
                "layer's sparsity; use scope='layer'"
            )

    def layer_sparsities(self, scores, sparsity, granularity):
        groups: dict[str, list[str]] = {}
        for name in scores:
            match = _BLOCK.match(name)
            groups.setdefault(match[1] if match else name, []).append(name)
        ratios, sizes = [], []
        for names in groups.values():
            flat = torch.cat([scores[n].reshape(-1).float() for n in names])
            flat = flat[torch.isfinite(flat)]
            mean = flat.mean() if flat.numel() else flat.new_zeros(())
            ratios.append(
                float((flat > self.outlier_m * mean).float().mean()) if flat.numel() else 0
            )
            sizes.append(sum(scores[n].numel() for n in names))
        d = torch.tensor(ratios, dtype=torch.float64)
        size = torch.tensor(sizes, dtype=torch.float64)
        spread = d.max() - d.min()
        d = (d - d.min()) / spread * 2 * self.lam if spread > 0 else torch.zeros_like(d)
        group_sparsity = (sparsity - (d - (d * size).sum() / size.sum())).clamp(0.0, 0.99)
        names = [n for members in groups.values() for n in members]
        per_layer = torch.cat(
            [group_sparsity[i].repeat(len(m)) for i, m in enumerate(groups.values())]
        )
        numel = torch.tensor([scores[n].numel() for n in names], dtype=torch.float64)
        counts = exact_counts(per_layer * numel, round(sparsity * float(numel.sum())), numel)
        return {n: counts[i] / scores[n].numel() for i, n in enumerate(names)}

    def masks(self, scores, sparsity, granularity):
        budget = self.layer_sparsities(scores, sparsity, granularity)
        return {name: granularity.select(s, budget[name]) for name, s in scores.items()}


_BLOCK = re.compile(r"^(.*?\.\d+)\.")


def exact_counts(wanted: torch.Tensor, total: int, limit: torch.Tensor) -> list[int]:
    """Integers near ``wanted`` (each in [0, limit]) that sum to ``total``: largest remainder."""
    wanted = wanted * (total / float(wanted.sum())) if float(wanted.sum()) > 0 else wanted
    counts = wanted.floor().clamp(min=0).minimum(limit)
    short = total - int(counts.sum())
    order = torch.argsort(wanted - counts, descending=True, stable=True).tolist()
    i = 0
    while short > 0 and i < 10 * len(order) + 10:
        j = order[i % len(order)]
        if counts[j] < limit[j]:
            counts[j] += 1
            short -= 1
        i += 1
    return [int(c) for c in counts]


def get_allocation(scope: str) -> Allocation:
    return ALLOCATIONS.get(scope)()
