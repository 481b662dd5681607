"""``pk.report(model)``: per-layer sparsity, N:M validity and sizes, as a table or a dict."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from ..granularity import parse_granularity
from ..granularity.nm import NM
from ..masks import get_mask
from ..pruner import granularity_of
from ..targets import Target, is_prunable, select_targets


@dataclass
class LayerRow:
    name: str
    shape: list[int]
    granularity: str
    sparsity: float
    nonzero: int
    numel: int
    #: True/False for N:M layers (every group holds), None otherwise
    nm_valid: bool | None


@dataclass
class Report:
    layers: list[LayerRow]
    total_params: int
    total_nonzero: int
    dense_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def target_params(self) -> int:
        return sum(r.numel for r in self.layers)

    @property
    def target_sparsity(self) -> float:
        total = self.target_params
        return 1.0 - sum(r.nonzero for r in self.layers) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [asdict(r) for r in self.layers],
            "totals": {
                "params": self.total_params,
                "nonzero": self.total_nonzero,
                "target_params": self.target_params,
                "target_sparsity": self.target_sparsity,
                "dense_bytes": self.dense_bytes,
                **self.extra,
            },
        }

    def __rich__(self) -> Table:
        table = Table(title="prunekit report", show_lines=False)
        for col in ("layer", "shape", "granularity", "sparsity", "N:M ok", "nonzero"):
            table.add_column(col, justify="left" if col in ("layer", "granularity") else "right")
        for r in self.layers:
            ok = "-" if r.nm_valid is None else ("yes" if r.nm_valid else "NO")
            table.add_row(
                r.name,
                "x".join(map(str, r.shape)),
                r.granularity,
                f"{r.sparsity:.2%}",
                ok,
                f"{r.nonzero:,}",
            )
        table.add_section()
        table.add_row(
            "targets",
            "",
            "",
            f"{self.target_sparsity:.2%}",
            "",
            f"{sum(r.nonzero for r in self.layers):,}",
        )
        table.caption = (
            f"params {self.total_params:,} | nonzero {self.total_nonzero:,} | "
            f"dense size {self.dense_bytes / 2**20:.2f} MiB"
        )
        return table

    def __str__(self) -> str:
        buf = io.StringIO()
        Console(file=buf, width=120, color_system=None).print(self)
        return buf.getvalue()


def _layers(model: nn.Module) -> list[Target]:
    pruned = [
        Target(name, m)
        for name, m in model.named_modules()
        if is_prunable(m) and (granularity_of(m, "weight") or get_mask(m, "weight") is not None)
    ]
    return pruned or select_targets(model)


@torch.no_grad()
def report(model: nn.Module) -> Report:
    """Per-layer sparsity of the pruned layers (or of every prunable layer if none is pruned)."""
    rows = []
    for t in _layers(model):
        w = t.weight
        nnz = int(torch.count_nonzero(w))
        spec = granularity_of(t.module, t.param) or "-"
        gran = parse_granularity(spec) if spec != "-" else None
        valid = gran.holds(t.matrix()) if isinstance(gran, NM) else None
        rows.append(
            LayerRow(t.qualname, list(w.shape), spec, 1 - nnz / w.numel(), nnz, w.numel(), valid)
        )
    params = list(model.parameters())
    state = model.state_dict()
    return Report(
        layers=rows,
        total_params=sum(p.numel() for p in params),
        total_nonzero=sum(int(torch.count_nonzero(p)) for p in params),
        dense_bytes=sum(v.numel() * v.element_size() for v in state.values()),
    )
