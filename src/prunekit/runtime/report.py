"""What :func:`~prunekit.runtime.sparsify.sparsify` decided and measured, per layer and overall."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

DENSE = "dense"


@dataclass
class LayerDecision:
    name: str
    layer_type: str
    #: [out, in] of the layer's weight matrix
    shape: list[int]
    #: rows of the [rows, in] input the layer was timed at (batch x tokens x pixels)
    rows: int
    sparsity: float
    #: the kernel now running the layer, or "dense"
    kernel: str
    #: why: "faster", "dense is faster", "sparsity below ...", "not ..."
    reason: str
    dense_s: float | None = None
    #: the best sparse kernel's time (whether or not it was chosen)
    sparse_s: float | None = None
    best_kernel: str | None = None
    #: median seconds per call of every candidate timed, dense included
    candidates: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    #: the kernel and the code path that runs it, e.g. "prunekit_bitmask[avx512]" ("" if dense)
    code_path: str = ""

    @property
    def swapped(self) -> bool:
        return self.kernel != DENSE

    @property
    def speedup(self) -> float | None:
        """Dense time over the best sparse kernel's time (> 1 means sparse is faster)."""
        if self.dense_s is None or not self.sparse_s:
            return None
        return self.dense_s / self.sparse_s

    @property
    def chosen_s(self) -> float | None:
        return self.sparse_s if self.swapped else self.dense_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "swapped": self.swapped, "speedup": self.speedup}


@dataclass
class SparsifyReport:
    layers: list[LayerDecision]
    batch_size: int
    threads: int
    min_speedup: float
    #: bytes of parameters and buffers before and after sparsify
    weight_bytes_before: int
    weight_bytes_after: int
    #: end-to-end dense / sparse forward time on the example inputs (None without them)
    realized_model_speedup: float | None = None
    model_dense_s: float | None = None
    model_sparse_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def timed(self) -> list[LayerDecision]:
        return [r for r in self.layers if r.dense_s is not None]

    @property
    def simulated_speedup(self) -> float | None:
        """Σ dense MACs / Σ non-zero MACs over the timed layers: the speedup if time were MACs."""
        layers = self.timed
        dense = sum(r.rows * r.shape[0] * r.shape[1] for r in layers)
        nonzero = sum(r.rows * r.shape[0] * r.shape[1] * (1 - r.sparsity) for r in layers)
        return dense / nonzero if nonzero else None

    @property
    def realized_layer_speedup(self) -> float | None:
        """Σ dense time / Σ time of what now runs, over the timed layers."""
        layers = self.timed
        chosen = sum(r.chosen_s for r in layers)
        return sum(r.dense_s for r in layers) / chosen if chosen else None

    @property
    def memory_ratio(self) -> float:
        return (
            self.weight_bytes_after / self.weight_bytes_before if self.weight_bytes_before else 1.0
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [r.to_dict() for r in self.layers],
            "totals": {
                "batch_size": self.batch_size,
                "threads": self.threads,
                "min_speedup": self.min_speedup,
                "swapped": sum(r.swapped for r in self.layers),
                "simulated_speedup": self.simulated_speedup,
                "realized_layer_speedup": self.realized_layer_speedup,
                "realized_model_speedup": self.realized_model_speedup,
                "model_dense_s": self.model_dense_s,
                "model_sparse_s": self.model_sparse_s,
                "weight_bytes_before": self.weight_bytes_before,
                "weight_bytes_after": self.weight_bytes_after,
                "memory_ratio": self.memory_ratio,
                **self.extra,
            },
        }

    def __rich__(self) -> Table:
        table = Table(title="prunekit sparsify", show_lines=False)
        for col in ("layer", "shape", "rows", "sparsity", "kernel", "dense", "sparse", "speedup"):
            table.add_column(col, justify="left" if col in ("layer", "kernel") else "right")
        for r in self.layers:
            if r.swapped:
                kernel = r.code_path or r.kernel
            elif r.dense_s is None or r.reason.startswith("undone"):
                kernel = f"dense ({r.reason})"
            else:
                kernel = f"dense ({r.best_kernel} slower)"
            table.add_row(
                r.name,
                "x".join(map(str, r.shape)),
                str(r.rows),
                f"{r.sparsity:.1%}",
                escape(kernel),  # "name[avx512]" is not rich markup
                fmt_ms(r.dense_s),
                fmt_ms(r.sparse_s),
                fmt_x(r.speedup) + (" (cached)" if r.cached else ""),
            )
        table.caption = (
            f"swapped {sum(r.swapped for r in self.layers)}/{len(self.layers)} layers | "
            f"speedup simulated {fmt_x(self.simulated_speedup)}, "
            f"realized (layers) {fmt_x(self.realized_layer_speedup)}, "
            f"realized (model) {fmt_x(self.realized_model_speedup)}"
            f" | weights {self.weight_bytes_before / 2**20:.2f} -> "
            f"{self.weight_bytes_after / 2**20:.2f} MiB ({self.memory_ratio:.1%}) | "
            f"batch {self.batch_size}, {self.threads} thread(s)"
        )
        return table

    def __str__(self) -> str:
        return as_text(self, width=140)


def as_text(renderable: object, width: int = 120) -> str:
    """A rich renderable as plain text (no colour), ``width`` columns wide."""
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(renderable)
    return buf.getvalue()


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f} ms"


def fmt_x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"
