"""``scope="owl"``: outlier-weighted layerwise sparsity (Yin et al. 2024)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from .base import ALLOCATIONS, Allocation, exact_counts, layer_limits, warn_capped

_BLOCK = re.compile(r"^(.*?\.\d+)\.")


@ALLOCATIONS.register("owl")
@dataclass(frozen=True)
class OWL(Allocation):
    """Blocks with more outliers keep more weights.

    A block's outlier ratio D is the fraction of its unit scores above ``m`` times their mean
    (for Wanda and SparseGPT the scores are |W|·‖X‖). Ratios are rescaled to [0, 2·``lam``];
    sparsity_b = sparsity − (D̃_b − mean D̃), the mean weighted by unit count so that the total
    is exact. A block is the group of layers under one index of a repeated list
    (``encoder.layer.3.*``); a layer outside any list is its own block. No layer loses more
    than ``max_layer_sparsity`` of its units (with a warning where that cap binds).
    """

    examples: ClassVar[tuple] = ("owl", {"type": "owl", "lam": 0.1, "m": 3.0})

    lam: float = 0.08
    m: float = 5.0
    max_layer_sparsity: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.lam < 0.5:
            raise ConfigError(f"OWL.lam must be in [0, 0.5), got {self.lam!r}")
        if self.m <= 0:
            raise ConfigError(f"OWL.m must be > 0, got {self.m!r}")
        if not 0.0 < self.max_layer_sparsity <= 1.0:
            raise ConfigError(
                f"max_layer_sparsity must be in (0, 1], got {self.max_layer_sparsity!r}"
            )

    def layer_sparsities(self, units, sparsity):
        blocks: dict[str, list[str]] = {}
        for name in units:
            match = _BLOCK.match(name)
            blocks.setdefault(match[1] if match else name, []).append(name)
        ratios, sizes = [], []
        for names in blocks.values():
            flat = torch.cat([units[n].reshape(-1).float() for n in names])
            flat = flat[torch.isfinite(flat)]
            mean = flat.mean() if flat.numel() else flat.new_zeros(())
            ratios.append(float((flat > self.m * mean).float().mean()) if flat.numel() else 0.0)
            sizes.append(sum(units[n].numel() for n in names))
        d = torch.tensor(ratios, dtype=torch.float64)
        size = torch.tensor(sizes, dtype=torch.float64)
        spread = d.max() - d.min()
        d = (d - d.min()) / spread * 2 * self.lam if spread > 0 else torch.zeros_like(d)
        block_sparsity = (sparsity - (d - (d * size).sum() / size.sum())).clamp(min=0.0)
        names = [n for members in blocks.values() for n in members]
        wanted = torch.cat(
            [block_sparsity[i].repeat(len(m)) for i, m in enumerate(blocks.values())]
        )
        numel = torch.tensor([units[n].numel() for n in names], dtype=torch.float64)
        limits = layer_limits(units, self.max_layer_sparsity)
        limit = torch.tensor([limits[n] for n in names], dtype=torch.float64)
        total = round(sparsity * float(numel.sum()))
        if total > limit.sum():
            raise ConfigError(
                f"sparsity {sparsity:g} is above what max_layer_sparsity="
                f"{self.max_layer_sparsity:g} allows; lower the sparsity or raise the cap"
            )
        counts = exact_counts(wanted * numel, total, limit)
        warn_capped(
            [
                n
                for n, c, w in zip(names, counts, wanted * numel, strict=True)
                if c < w - 1 and c == limits[n]
            ],
            self.max_layer_sparsity,
        )
        return {n: counts[i] / units[n].numel() for i, n in enumerate(names)}
