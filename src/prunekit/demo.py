"""``prunekit demo``: train two networks on scikit-learn's digits, prune them, measure the payoff.

Real data, no download (sklearn's bundled 8x8 digits, fixed stratified 70/30 split):

- a small CNN, pruned to 90% unstructured (global magnitude, cubic schedule), to 2:4, and to 50% of
  its channels, then physically shrunk;
- a wide MLP (64-2048-2048-10), large enough for sparse kernels to beat dense ones at batch 1,
  pruned to 90% unstructured and to 50% of its channels (shrunk).

Every row trains for the same number of epochs: the dense network ``dense_epochs``, then each
row, the dense one included, ``prune_epochs`` more (pruning while fine-tuning). Size on disk
(``pk.save``), resident weight memory and batch-1 latency are compared with the dense row of the
same network as "x smaller" / "x faster" (above 1 is better). Pruned unstructured models run
through ``pk.sparsify``, which keeps a sparse kernel only where it is measured faster. Latencies
are timed in interleaved rounds on one thread (thread CPU time).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.table import Table
from rich.text import Text
from torch import nn

from .analysis.bench import interleaved
from .api import finalize
from .config import PruneConfig
from .errors import PrunekitError
from .progress import track
from .pruner import Pruner
from .runtime import sparsify, sparsify_report, weight_bytes
from .schedule import Cubic, OneShot
from .structure.shrink import shrink
from .threads import torch_threads


@dataclass(frozen=True)
class DemoSettings:
    dense_epochs: int = 5
    prune_epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    latency_rounds: int = 60
    mlp_width: int = 2048


QUICK = DemoSettings(dense_epochs=2, prune_epochs=2, latency_rounds=10, mlp_width=256)


@dataclass
class DemoRow:
    network: str
    model: str
    accuracy: float
    #: accuracy points lost against the dense row of the same network
    accuracy_drop: float
    sparsity: float
    params: int
    disk_bytes: int
    weight_bytes: int
    latency_ms: float
    #: dense row / this row, for disk, memory and latency (above 1 is better)
    smaller: float
    less_memory: float
    faster: float
    #: layers pk.sparsify moved to sparse kernels / layers it timed ("-": not sparsified)
    kernels: str
    #: epochs of training in all (the same for every row)
    epochs: int


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


def digits_mlp(width: int = 2048) -> nn.Sequential:
    """A wide MLP for 8x8 digits: [N, 1, 8, 8] -> [N, 10] logits."""
    return nn.Sequential(
        nn.Flatten(),  # [N, 1, 8, 8] -> [N, 64]
        nn.Linear(64, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
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
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, fused=True)  # one pass per step
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


def disk_bytes(model: nn.Module) -> int:
    """Bytes on disk of ``pk.save(model, DIR)`` (compressed formats chosen per tensor)."""
    from . import save

    with tempfile.TemporaryDirectory() as tmp:
        save(model, tmp)
        return sum(f.stat().st_size for f in Path(tmp).iterdir())


@dataclass(frozen=True)
class Variant:
    """One row: a pruning config (None: the dense row) and whether to shrink after it."""

    name: str
    config: PruneConfig | None
    shrink: bool = False


def fine_tune(
    dense: nn.Module,
    variant: Variant,
    data: tuple[torch.Tensor, torch.Tensor],
    example: torch.Tensor,
    settings: DemoSettings,
    progress: bool,
) -> nn.Module:
    """A copy of ``dense`` trained ``prune_epochs`` more, pruning on the way; then finalized or
    shrunk."""
    model = copy.deepcopy(dense)
    step = None
    if variant.config is not None:
        pruner = Pruner(model, variant.config, example_inputs=example if variant.shrink else None)
        step = pruner.step
    train(model, *data, settings, settings.prune_epochs, variant.name, step, progress)
    if variant.config is None:
        return model
    return shrink(model, example) if variant.shrink else finalize(model)


def variants(settings: DemoSettings, steps_per_epoch: int) -> dict[str, list[Variant]]:
    ramp_end = max(1, settings.prune_epochs * steps_per_epoch // 2)
    cubic = Cubic(start=0, end=ramp_end, every=max(1, steps_per_epoch // 2))
    seed = settings.seed
    channels = PruneConfig(sparsity=0.5, granularity="channel", schedule=OneShot(), seed=seed)
    return {
        "CNN": [
            Variant("dense", None),
            Variant(
                "90% unstructured",
                PruneConfig(sparsity=0.9, scope="global", schedule=cubic, seed=seed),
            ),
            # the stem conv has one input channel: its 9 weights per filter form no groups of 4
            Variant(
                "2:4 (not the stem)",
                PruneConfig(granularity="2:4", exclude=["0"], schedule=OneShot(), seed=seed),
            ),
            Variant("50% channels, shrunk", channels, shrink=True),
        ],
        "MLP": [
            Variant("dense", None),
            Variant(
                "90% unstructured",
                PruneConfig(sparsity=0.9, scope="global", schedule=cubic, seed=seed),
            ),
            Variant("50% channels, shrunk", channels, shrink=True),
        ],
    }


def run_demo(settings: DemoSettings = DemoSettings(), progress: bool = True) -> list[DemoRow]:
    """Train, prune, measure. Returns one row per model, dense rows first in each network."""
    torch.manual_seed(settings.seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(settings.seed)
    steps_per_epoch = -(-len(x_tr) // settings.batch_size)
    networks = {"CNN": digits_cnn, "MLP": lambda: digits_mlp(settings.mlp_width)}
    rows = []
    for network, variants_ in variants(settings, steps_per_epoch).items():
        torch.manual_seed(settings.seed)
        dense = networks[network]()
        # the CNN is too small for a second thread to pay; the wide MLP's GEMMs use them all
        with torch_threads(1 if network == "CNN" else torch.get_num_threads()):
            train(dense, x_tr, y_tr, settings, settings.dense_epochs, network, progress=progress)
            models = {
                v.name: fine_tune(dense, v, (x_tr, y_tr), x_te[:2], settings, progress)
                for v in variants_
            }
        rows += measure(network, models, (x_te, y_te), settings)
    return rows


def measure(
    network: str,
    models: dict[str, nn.Module],
    test: tuple[torch.Tensor, torch.Tensor],
    settings: DemoSettings,
) -> list[DemoRow]:
    """Accuracy, size, memory and batch-1 latency of each model against the first (dense)."""
    x_te, y_te = test
    sample = x_te[:1]
    runnable, kernels = {}, {}
    with torch_threads(1):
        for name, m in models.items():
            kernels[name] = "-"
            if any(torch.count_nonzero(p) < p.numel() * 0.7 for p in m.parameters()):
                fast = sparsify(copy.deepcopy(m), example_inputs=sample)
                timed = sparsify_report(fast).timed
                kernels[name] = f"{sum(d.swapped for d in timed)}/{len(timed)}"
                m = fast
            runnable[name] = m
        lat = interleaved({n: (lambda m=m: m(sample)) for n, m in runnable.items()},
                          settings.latency_rounds)  # fmt: skip
    dense_name = next(iter(models))
    base_acc = accuracy(models[dense_name], x_te, y_te)
    base = None
    rows = []
    for name, m in models.items():
        weights = [mod.weight for mod in m.modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]
        full = [mod.weight for mod in models[dense_name].modules()
                if isinstance(mod, (nn.Linear, nn.Conv2d))]  # fmt: skip
        nnz = sum(int(torch.count_nonzero(w)) for w in weights)
        acc = accuracy(runnable[name], x_te, y_te)
        row = DemoRow(
            network=network,
            model=name,
            accuracy=acc,
            accuracy_drop=(base_acc - acc) * 100,
            sparsity=1 - nnz / sum(w.numel() for w in full),
            params=sum(p.numel() for p in m.parameters()),
            disk_bytes=disk_bytes(m),
            weight_bytes=weight_bytes(runnable[name]),
            latency_ms=lat[name].median * 1e3,
            smaller=1.0,
            less_memory=1.0,
            faster=1.0,
            kernels=kernels[name],
            epochs=settings.dense_epochs + settings.prune_epochs,
        )
        base = base or row
        row.smaller = base.disk_bytes / row.disk_bytes
        row.less_memory = base.weight_bytes / row.weight_bytes
        row.faster = base.latency_ms / row.latency_ms
        rows.append(row)
    return rows


def demo_table(rows: list[DemoRow]) -> Table:
    table = Table(title="prunekit demo: scikit-learn digits (test split, 540 images), batch 1")
    columns = ("network", "model", "test acc", "drop", "sparsity", "size (x smaller)",
               "memory (x less)", "latency (x faster)", "sparse kernels")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("network", "model") else "right")
    for r in rows:
        table.add_row(
            r.network,
            r.model,
            f"{r.accuracy:.2%}",
            f"{r.accuracy_drop:+.2f}",
            f"{r.sparsity:.0%}",
            f"{r.disk_bytes / 1024:.0f} KiB ({r.smaller:.2f}x)",
            f"{r.weight_bytes / 1024:.0f} KiB ({r.less_memory:.2f}x)",
            f"{r.latency_ms:.3f} ms ({r.faster:.2f}x)",
            r.kernels,
        )
    return table


def demo_legend() -> Text:
    return Text(
        "drop: test-accuracy points lost against the dense row of the same network. sparsity: "
        "weights removed or zero, of the dense network's. x smaller / less / faster: the dense "
        "row divided by this row (above 1 is better). size on disk: pk.save (smallest format per "
        "tensor); weight memory: resident parameters and buffers as run; latency: median of "
        "interleaved batch-1 runs, 1 thread, thread CPU time. sparse kernels: layers that "
        "pk.sparsify moved to a sparse kernel / layers it timed (a kernel is kept only where "
        "measured faster; '-': not sparse enough to try). shrunk: channels physically removed. "
        "Every row trained for the same number of epochs."
    )


def rows_as_dicts(rows: list[DemoRow]) -> list[dict]:
    return [asdict(r) for r in rows]
