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
from ..masks import get_mask, granularity_of, mask_names
from ..structure.experts import is_expert_weight
from ..targets import Target, is_target_type, select_targets


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


def _masked_matrix(name: str, module: nn.Module, param: str) -> torch.Tensor:
    """A pruned parameter as ``[rows, in]``: a target's weight through :class:`Target`, a MoE
    experts module's ``[experts, ..., last]`` weight with its last dimension as columns."""
    if param == "weight" and is_target_type(module):
        return Target(name, module).matrix()
    tensor = getattr(module, param).detach()
    return tensor.reshape(-1, tensor.shape[-1])  # [..., in] -> [prod(...), in]


def _pruned_layers(model: nn.Module) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
    """(qualified name, module, parameter, ``[rows, in]`` matrix) of every layer weight prunekit
    pruned (masked or recorded), layers swapped for sparse kernels and masked MoE expert
    weights included; every prunable layer's weight if none was pruned."""
    from ..runtime.module import SparseLinear

    rows = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, SparseLinear):
            rows.append((f"{prefix}weight", m, "weight", m.weight_matrix()))
            continue
        params = [p for p, _ in mask_names(m) if is_expert_weight(m, p)]
        if is_target_type(m) and (granularity_of(m, "weight") or get_mask(m, "weight") is not None):
            params.insert(0, "weight")
        rows += [(f"{prefix}{p}", m, p, _masked_matrix(name, m, p)) for p in params]
    if rows:
        return rows
    return [(t.qualname, t.module, t.param, t.matrix()) for t in select_targets(model)]


@torch.no_grad()
def report(model: nn.Module) -> Report:
    """Per-layer sparsity of the pruned layers (or of every prunable layer if none is pruned).

    Layers swapped for sparse kernels by ``sparsify`` count with their logical weights.
    """
    rows, packed = [], []
    for qualname, module, param, matrix in _pruned_layers(model):
        nnz, numel = int(torch.count_nonzero(matrix)), matrix.numel()
        spec = granularity_of(module, param) or "-"
        gran = parse_granularity(spec) if spec != "-" else None
        valid = gran.holds(matrix) if isinstance(gran, NM) else None
        weight = getattr(module, param, None)
        shape = list((weight if isinstance(weight, torch.Tensor) else matrix).shape)
        rows.append(LayerRow(qualname, shape, spec, 1 - nnz / numel, nnz, numel, valid))
        if not isinstance(weight, torch.Tensor):  # swapped for a sparse kernel: not a parameter
            packed.append((numel, nnz, numel * matrix.element_size()))
    params = list(model.parameters())
    return Report(
        layers=rows,
        total_params=sum(p.numel() for p in params) + sum(n for n, _, _ in packed),
        total_nonzero=sum(int(torch.count_nonzero(p)) for p in params)
        + sum(z for _, z, _ in packed),
        dense_bytes=_dense_state_bytes(model) + sum(b for _, _, b in packed),
    )


def _dense_state_bytes(model: nn.Module) -> int:
    """Bytes of the state dict, leaving out the packed arrays of sparse-kernel layers."""
    from ..runtime.module import SparseLinear

    packed = {
        f"{name}.{buf}" if name else buf
        for name, m in model.named_modules()
        if isinstance(m, SparseLinear)
        for buf in m.packed
    }
    state = model.state_dict()
    return sum(v.numel() * v.element_size() for k, v in state.items() if k not in packed)
