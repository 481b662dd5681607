"""What ``pk.optimize_for_inference`` buys: ResNet-50 and its 50%-channel prunekit prune, as
built, BatchNorm folded, channels-last and both, all eight models timed in one run (interleaved,
rotating order, 1 thread, thread CPU time), so the pruned/dense ratios are paired. ``--where``
also splits one forward by leaf module type (time between a module's pre- and post-hook; "rest":
residual adds, functional ReLUs and Python), dense and pruned interleaved::

    PYTHONPATH=src python benchmarks/optimize.py --rounds 15
    PYTHONPATH=src python benchmarks/optimize.py --where
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import prunekit as pk
from structured import cases, prune_prunekit, resnet

clock = time.thread_time
VARIANTS = {"as built": None, "BatchNorm folded": False, "channels-last": "cl", "both": True}


def variant(model: nn.Module, how: bool | str | None, x: torch.Tensor) -> nn.Module:
    if how is None:
        return model
    if how == "cl":  # the layout alone, no fold
        return copy.deepcopy(model).to(memory_format=torch.channels_last)
    return pk.optimize_for_inference(model, x, channels_last=how)


@torch.no_grad()
def paired(models: dict[tuple[str, str], nn.Module], rounds: int) -> dict:
    xs = {
        b: torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(0)) for b in (1, 8)
    }
    keys = list(models)
    times: dict = defaultdict(list)
    for k in keys:
        for b in (1, 8):
            models[k](xs[b])
    for r in range(rounds):
        for b in (1, 8):
            for i in range(len(keys)):
                k = keys[(i + r) % len(keys)]
                t = clock()
                models[k](xs[b])
                times[k, b].append(clock() - t)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def where(dense: nn.Module, small: nn.Module, rounds: int) -> dict[str, dict[str, float]]:
    """Mean ms per forward by leaf module type, and the rest, dense and pruned interleaved."""
    x = torch.randn(1, 3, 224, 224)
    acc: dict[str, dict[str, float]] = {"dense": defaultdict(float), "pruned": defaultdict(float)}
    start: dict[nn.Module, float] = {}
    models = {"dense": copy.deepcopy(dense), "pruned": copy.deepcopy(small)}  # hooks on copies
    for side, m in models.items():
        for mod in m.modules():
            if not list(mod.children()):
                mod.register_forward_pre_hook(lambda mod, i: start.__setitem__(mod, clock()))
                mod.register_forward_hook(
                    lambda mod, i, o, s=side: acc[s].__setitem__(
                        type(mod).__name__, acc[s][type(mod).__name__] + clock() - start[mod]
                    )
                )
        for _ in range(3):
            m(x)
        acc[side].clear()
    for r in range(rounds):
        for side in ("dense", "pruned") if r % 2 else ("pruned", "dense"):
            t = clock()
            models[side](x)
            acc[side]["total"] += clock() - t
    out = {}
    for side, a in acc.items():
        parts = {k: v / rounds * 1e3 for k, v in a.items()}
        parts["rest"] = parts["total"] - sum(v for k, v in parts.items() if k != "total")
        out[side] = parts
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--where", action="store_true", help="split a batch-1 forward by module")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = resnet(False).eval()
    x = torch.randn(1, 3, 224, 224)
    case = cases(False)[0]
    small, _ = prune_prunekit(copy.deepcopy(dense), x, 0.5, case)
    small.eval()
    if args.where:
        for name, how in (("as built", None), ("both", True)):
            got = where(variant(dense, how, x), variant(small, how, x), args.rounds)
            d, p = got["dense"], got["pruned"]
            print(f"{name}: dense {d['total']:.1f} ms, pruned {p['total']:.1f} ms")
            for k in sorted(d, key=lambda k: -d[k]):
                if k != "total" and d[k] > 0.05:
                    print(
                        f"  {k:18s} dense {d[k]:6.2f} ms ({d[k] / d['total']:4.0%})  pruned "
                        f"{p.get(k, 0):6.2f} ms ({p.get(k, 0) / p['total']:4.0%})  "
                        f"ratio {p.get(k, 0) / d[k]:.2f}"
                    )
        return
    models = {}
    for name, how in VARIANTS.items():
        models[name, "dense"] = variant(dense, how, x)
        models[name, "pruned"] = variant(small, how, x)
    med = paired(models, args.rounds)
    print(f"ResNet-50, prunekit 50% channels (MACs 0.257), {args.rounds} rounds, 1 thread")
    print("| | dense b1 | pruned b1 | ratio b1 | dense b8 | pruned b8 | ratio b8 |")
    print("|---|---|---|---|---|---|---|")
    for name in VARIANTS:
        cells = []
        for b in (1, 8):
            d, p = med[(name, "dense"), b] * 1e3, med[(name, "pruned"), b] * 1e3
            cells += [f"{d:.1f} ms", f"{p:.1f} ms", f"{p / d:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
