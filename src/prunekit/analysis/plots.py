"""PNG plots of sensitivity curves, per-layer sparsity and a quality/size/latency sweep
(matplotlib, imported lazily: ``pip install 'prunekit[plot]'``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .sensitivity import Sensitivity


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'prunekit[plot]'") from None
    return plt


def _short(name: str) -> str:
    return name.removesuffix(".weight")


def plot_sensitivity(sens: Sensitivity, path: str | Path, metric: str = "metric") -> Path:
    """One line per unit: ``metric`` against the unit's sparsity (others dense)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    xs = [100 * s for s in sens.sparsities]
    units = sorted(sens.metric, key=lambda u: -sens.metric[u][-1])
    cmap = plt.get_cmap("viridis", max(len(units), 2))
    for i, u in enumerate(units):
        ax.plot(xs, sens.metric[u], marker="o", ms=3, lw=1.2, color=cmap(i), label=_short(u))
    ax.axhline(sens.baseline, color="black", ls="--", lw=1, label="dense")
    ax.set_xlabel("sparsity of the one pruned layer (%)")
    ax.set_ylabel(metric)
    ax.set_title(
        f"Per-layer sensitivity ({sens.criterion}, {sens.granularity}): each layer pruned alone"
    )
    ax.grid(alpha=0.3)
    if len(units) <= 24:
        ax.legend(fontsize=7, ncol=2, loc="upper left", title="most sensitive first")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_layer_sparsity(layers: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Bars of each layer's achieved sparsity (``pk.report(model).to_dict()["layers"]``)."""
    plt = _pyplot()
    names = [_short(r["name"]) for r in layers]
    values = [100 * r["sparsity"] for r in layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names) + 2), 5), dpi=110)
    ax.bar(range(len(names)), values, color="tab:blue")
    total = sum(r["numel"] for r in layers)
    mean = 100 * sum(r["sparsity"] * r["numel"] for r in layers) / max(total, 1)
    ax.axhline(mean, color="tab:red", ls="--", lw=1, label=f"overall {mean:.1f}%")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_sweep(rows: Sequence[dict[str, float]], path: str | Path, metric: str = "metric") -> Path:
    """Quality against sparsity, with checkpoint size and measured latency (as % of the dense
    model's, the first row) on a second axis. ``rows``: dicts with ``sparsity``, ``metric``,
    ``size_mib``, ``latency_ms``."""
    plt = _pyplot()
    xs = [100 * r["sparsity"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.plot(xs, [r["metric"] for r in rows], marker="o", color="tab:blue", label=metric)
    ax.set_xlabel("overall sparsity (%)")
    ax.set_ylabel(metric, color="tab:blue")
    right = ax.twinx()
    size0, lat0 = rows[0]["size_mib"], rows[0]["latency_ms"]
    sizes = [100 * r["size_mib"] / size0 for r in rows]
    latencies = [100 * r["latency_ms"] / lat0 for r in rows]
    right.plot(
        xs, sizes, marker="s", color="tab:green",
        label=f"checkpoint size (% of {size0:.1f} MiB)",
    )  # fmt: skip
    right.plot(
        xs, latencies, marker="^", color="tab:orange",
        label=f"latency per batch (% of {lat0:.1f} ms)",
    )  # fmt: skip
    right.set_ylabel("% of the dense model")
    right.set_ylim(0, max(110, 1.05 * max(sizes + latencies)))
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower left", fontsize=8)
    ax.set_title("Sparsity sweep: quality, size and measured latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
