"""``prunekit demo``: train a small CNN on scikit-learn's digits, prune it two ways, and measure.

1. train the dense CNN (fixed split and seed);
2. prune a copy gradually to 90% unstructured (cubic schedule) while fine-tuning;
3. prune another copy to 2:4 and fine-tune;
4. compare test accuracy, sparsity, size on disk (``pk.save``) and batch-1 CPU latency (pruned
   models after ``pk.sparsify``, which moves a layer to a sparse kernel only where that is faster).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.table import Table
from torch import nn

from .api import finalize
from .config import PruneConfig
from .errors import PrunekitError
from .progress import track
from .pruner import Pruner
from .runtime import sparsify, sparsify_report
from .schedule import Cubic, OneShot
from .threads import torch_threads


@dataclass(frozen=True)
class DemoSettings:
    dense_epochs: int = 30
    prune_epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    latency_repeats: int = 200


QUICK = DemoSettings(dense_epochs=4, prune_epochs=3, latency_repeats=10)


@dataclass
class DemoRow:
    model: str
    accuracy: float
    accuracy_drop: float
    sparsity: float
    disk_bytes: int
    latency_ms: float
    #: what pk.sparsify chose: layers moved to sparse kernels, of those it timed
    kernels: str


def digits_cnn() -> nn.Sequential:
    """A small CNN for 8x8 digits: [N, 1, 8, 8] -> [N, 10] logits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),  # [N, 32, 4, 4] -> [N, 512]
        nn.Linear(32 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def load_digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bundled digits as tensors: a stratified 70/30 split, images scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise PrunekitError("the demo needs scikit-learn: pip install 'prunekit[demo]'") from None
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)

    def images(a):  # [N, 64] -> [N, 1, 8, 8]
        return torch.tensor(a, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0

    return images(x_tr), torch.tensor(y_tr), images(x_te), torch.tensor(y_te)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: DemoSettings,
    epochs: int,
    label: str,
    after_step: Callable[[], object] | None = None,
    progress: bool = True,
) -> None:
    """Adam with cosine decay; ``after_step`` runs after every optimizer step (``pruner.step``)."""
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps = epochs * -(-len(x) // settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in track(range(epochs), f"training {label}", progress):
        for idx in torch.randperm(len(x), generator=gen).split(settings.batch_size):
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


@torch.no_grad()
def latencies_ms(
    models: dict[str, nn.Module], sample: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Median batch-1 latency of each model, timed interleaved so load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():
        for _ in range(5):
            m(sample)
    for _ in range(repeats):
        for name, m in models.items():
            start = time.perf_counter()
            m(sample)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def disk_bytes(model: nn.Module) -> int:
    """Bytes on disk of ``pk.save(model, DIR)`` (compressed formats chosen per tensor)."""
    from . import save

    with tempfile.TemporaryDirectory() as tmp:
        save(model, tmp)
        return sum(f.stat().st_size for f in Path(tmp).iterdir())


def prune_and_finetune(
    dense: nn.Module,
    config: PruneConfig,
    data: tuple[torch.Tensor, torch.Tensor],
    settings: DemoSettings,
    label: str,
    progress: bool,
) -> nn.Module:
    """A pruned, fine-tuned, finalized copy of ``dense``."""
    model = copy.deepcopy(dense)
    pruner = Pruner(model, config)
    train(model, *data, settings, settings.prune_epochs, label, pruner.step, progress)
    return finalize(model)


def run_demo(settings: DemoSettings = DemoSettings(), progress: bool = True) -> list[DemoRow]:
    """Train, prune both ways, measure. Returns one row per model.

    Runs on one thread: for a CNN this small, more threads only add synchronisation.
    """
    with torch_threads(1):
        return _run_demo(settings, progress)


def _run_demo(settings: DemoSettings, progress: bool) -> list[DemoRow]:
    torch.manual_seed(settings.seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(settings.seed)
    dense = digits_cnn()
    train(dense, x_tr, y_tr, settings, settings.dense_epochs, "dense", progress=progress)
    steps_per_epoch = -(-len(x_tr) // settings.batch_size)
    ramp_end = max(1, settings.prune_epochs * steps_per_epoch // 2)
    gradual = PruneConfig(
        sparsity=0.9,
        scope="global",
        schedule=Cubic(start=0, end=ramp_end, every=max(1, steps_per_epoch // 2)),
        seed=settings.seed,
    )
    # the stem conv has one input channel: its 9 weights per filter form no groups of 4
    two_four = PruneConfig(granularity="2:4", exclude=["0"], schedule=OneShot(), seed=settings.seed)
    models = {
        "dense": dense,
        "90% unstructured (cubic)": prune_and_finetune(
            dense, gradual, (x_tr, y_tr), settings, "90% unstructured", progress
        ),
        "2:4 (all but stem conv)": prune_and_finetune(
            dense, two_four, (x_tr, y_tr), settings, "2:4", progress
        ),
    }
    base = accuracy(dense, x_te, y_te)
    rows, runnable = [], {}
    for name, m in models.items():
        weights = [mod.weight for mod in m.modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]
        nnz = sum(int(torch.count_nonzero(w)) for w in weights)
        kernels = "dense"
        if m is not dense:  # sparse kernels only where measured faster at batch 1
            m = sparsify(copy.deepcopy(m), example_inputs=x_te[:1])
            timed = sparsify_report(m).timed
            swapped = [d.kernel for d in timed if d.swapped]
            kernels = f"{len(swapped)}/{len(timed)} sparse" + (
                f" ({swapped[0]})" if swapped else ""
            )
        runnable[name] = m
        acc = accuracy(m, x_te, y_te)
        rows.append(
            DemoRow(
                model=name,
                accuracy=acc,
                accuracy_drop=(base - acc) * 100,
                sparsity=1 - nnz / sum(w.numel() for w in weights),
                disk_bytes=disk_bytes(models[name]),
                latency_ms=0.0,
                kernels=kernels,
            )
        )
    lat = latencies_ms(runnable, x_te[:1], settings.latency_repeats)
    for row in rows:
        row.latency_ms = lat[row.model]
    return rows


def demo_table(rows: list[DemoRow]) -> Table:
    table = Table(title="prunekit demo: CNN on scikit-learn digits (test split, 540 images)")
    for col in (
        "model",
        "test acc",
        "drop (pts)",
        "weight sparsity",
        "size on disk",
        "latency b=1",
        "kernels",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    dense_size, dense_lat = rows[0].disk_bytes, rows[0].latency_ms
    for r in rows:
        table.add_row(
            r.model,
            f"{r.accuracy:.2%}",
            f"{r.accuracy_drop:+.2f}",
            f"{r.sparsity:.1%}",
            f"{r.disk_bytes / 1024:.0f} KiB ({r.disk_bytes / dense_size:.2f}x)",
            f"{r.latency_ms:.3f} ms ({dense_lat / r.latency_ms:.2f}x)",
            r.kernels,
        )
    return table


def rows_as_dicts(rows: list[DemoRow]) -> list[dict]:
    return [asdict(r) for r in rows]
