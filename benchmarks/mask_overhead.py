"""Training-step overhead of prunekit's mask enforcement, against plain training and against
``torch.nn.utils.prune``, measured in one run as ratios of median step times (interleaved).

    python benchmarks/mask_overhead.py [--threads 1] [--repeats 60]

At 1 thread steps are timed in thread CPU time, which other processes' load does not inflate; with
more threads, in wall-clock time.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.utils.prune as torch_prune
from rich.console import Console
from rich.table import Table
from torch import nn

import prunekit as pk


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 256)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "MLP 1024-2048-2048-256, batch 64": (mlp, (64, 1024)),
    "CNN 3 conv + linear, 16x16, batch 32": (cnn, (32, 3, 16, 16)),
}
OPTIMIZERS = {
    "SGD+momentum+wd": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, weight_decay=1e-4),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-4, weight_decay=0.01),
}


def prunable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def variants(factory: Callable[[], nn.Module], sparsity: float) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    plain = factory()
    ours = copy.deepcopy(plain)
    pk.prune(ours, sparsity)
    theirs = copy.deepcopy(plain)
    for m in prunable(theirs):
        torch_prune.l1_unstructured(m, "weight", amount=sparsity)
    return {"plain": plain, "prunekit": ours, "torch.nn.utils.prune": theirs}


def step_fn(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def median_step_times(
    steps: dict[str, Callable[[], None]], repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    for step in steps.values():
        for _ in range(5):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = clock()
            step()
            times[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    table = Table(
        title=f"training-step time at {args.sparsity:.0%} sparsity, {args.threads} thread(s), "
        f"median of {args.repeats} interleaved steps "
        f"({'thread CPU' if args.threads == 1 else 'wall-clock'} time)"
    )
    for col in ("model", "optimizer", "plain ms", "prunekit ms", "torch prune ms",
                "prunekit / plain", "torch prune / plain"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("model", "optimizer") else "right")
    for case, (factory, shape) in CASES.items():
        x = torch.randn(shape)
        for opt_name, make_opt in OPTIMIZERS.items():
            models = variants(factory, args.sparsity)
            steps = {k: step_fn(m, make_opt(m.parameters()), x) for k, m in models.items()}
            t = median_step_times(steps, args.repeats, clock)
            base = t["plain"]
            table.add_row(
                case, opt_name, f"{base * 1e3:.2f}", f"{t['prunekit'] * 1e3:.2f}",
                f"{t['torch.nn.utils.prune'] * 1e3:.2f}", f"{t['prunekit'] / base:.3f}",
                f"{t['torch.nn.utils.prune'] / base:.3f}",
            )  # fmt: skip
            ours = models["prunekit"]
            zeros_kept = all(
                (m.weight[~mask] == 0).all() for _, m, _, mask in pk.MaskState(ours).items()
            )
            if not zeros_kept:
                raise SystemExit("pruned weights revived during the benchmark")
    Console().print(table)


if __name__ == "__main__":
    main()
