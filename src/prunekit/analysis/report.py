"""``pk.report(model)``: per-layer sparsity, N:M validity and sizes, as a table or a dict."""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from ..granularity import parse_granularity
from ..granularity.nm import NM
from ..masks import get_mask, granularity_of, mask_names
from ..provenance import params_before, shape_before
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
    #: the shape before ``shrink`` removed channels or heads; None if it was not resized
    before: list[int] | None = None

    @property
    def numel_before(self) -> int:
        return math.prod(self.before) if self.before is not None else self.numel


@dataclass
class Report:
    layers: list[LayerRow]
    total_params: int
    total_nonzero: int
    dense_bytes: int
    #: the model's parameter count before ``shrink``; None if it was not shrunk
    params_before: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def target_params(self) -> int:
        return sum(r.numel for r in self.layers)

    @property
    def target_sparsity(self) -> float:
        total = self.target_params
        return 1.0 - sum(r.nonzero for r in self.layers) / total if total else 0.0

    @property
    def target_removed(self) -> float:
        """The share of the pruned layers' entries that shrink removed."""
        before = sum(r.numel_before for r in self.layers)
        return 1.0 - self.target_params / before if before else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [asdict(r) for r in self.layers],
            "totals": {
                "params": self.total_params,
                "nonzero": self.total_nonzero,
                "target_params": self.target_params,
                "target_sparsity": self.target_sparsity,
                "dense_bytes": self.dense_bytes,
                **({} if self.params_before is None else {"params_before": self.params_before}),
                **self.extra,
            },
        }

    def __rich__(self) -> Table:
        shrunk = any(r.before is not None for r in self.layers)
        nm = any(r.nm_valid is not None for r in self.layers)
        table = Table(title="prunekit report", show_lines=False)
        columns = ["layer", "shape", "granularity"] + ["removed"] * shrunk + ["sparsity"]
        for col in columns + ["N:M ok"] * nm + ["nonzero"]:
            left = col in ("layer", "granularity")  # a long layer name folds, whole, not cut
            table.add_column(col, justify="left" if left else "right", overflow="fold")
        for r in self.layers:
            shape = "x".join(map(str, r.shape))
            if r.before is not None:
                shape = f"{'x'.join(map(str, r.before))} → {shape}"
            cells = [r.name, shape, r.granularity]
            cells += [f"{1 - r.numel / r.numel_before:.2%}"] * shrunk + [f"{r.sparsity:.2%}"]
            cells += ["-" if r.nm_valid is None else ("yes" if r.nm_valid else "NO")] * nm
            table.add_row(*cells, f"{r.nonzero:,}")
        table.add_section()
        totals = ["targets", "", ""] + [f"{self.target_removed:.2%}"] * shrunk
        totals += [f"{self.target_sparsity:.2%}"] + [""] * nm
        table.add_row(*totals, f"{sum(r.nonzero for r in self.layers):,}")
        params = f"params {self.total_params:,}"
        if self.params_before is not None:
            share = self.total_params / self.params_before
            params += f" ({share:.1%} of {self.params_before:,} before shrink)"
        table.caption = (
            f"{params} | nonzero {self.total_nonzero:,} | "
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
        before = shape_before(module, param)
        rows.append(LayerRow(qualname, shape, spec, 1 - nnz / numel, nnz, numel, valid, before))
        if not isinstance(weight, torch.Tensor):  # swapped for a sparse kernel: not a parameter
            packed.append((numel, nnz, numel * matrix.element_size()))
    params = list(model.parameters())
    return Report(
        layers=rows,
        total_params=sum(p.numel() for p in params) + sum(n for n, _, _ in packed),
        total_nonzero=sum(int(torch.count_nonzero(p)) for p in params)
        + sum(z for _, z, _ in packed),
        dense_bytes=_dense_state_bytes(model) + sum(b for _, _, b in packed),
        params_before=params_before(model),
    )


def _dense_state_bytes(model: nn.Module) -> int:
    """Bytes of the state dict, a tensor shared by several entries (tied input and output
    embeddings) once, leaving out the packed arrays of sparse-kernel layers."""
    from ..runtime.module import SparseLinear

    packed = {
        f"{name}.{buf}" if name else buf
        for name, m in model.named_modules()
        if isinstance(m, SparseLinear)
        for buf in m.packed
    }
    unique = {
        (v.data_ptr(), v.dtype, v.shape): v
        for k, v in model.state_dict().items()
        if k not in packed
    }
    return sum(v.numel() * v.element_size() for v in unique.values())
