"""Print the zoo table: parameters left after 50% channel and 50% head pruning, shrunk and
verified. Run from the repository root: ``PYTHONPATH=src python tests/structure/zoo_table.py``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import prunekit as pk
from tests.structure.zoo import ATTENTION, INPUTS, ZOO


def ratio(name: str, granularity: str) -> str:
    model, x = ZOO[name](), INPUTS[name]()
    before = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.prune(model, 0.5, granularity=granularity, example_inputs=x)
        small = pk.shrink(model, x)
    return f"{sum(p.numel() for p in small.parameters()) / before:.3f}"


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"{'model':14s} {'channels':>8s} {'heads':>6s}")
    for name in sys.argv[1:] or ZOO:
        heads = ratio(name, "head") if name in ATTENTION else "-"
        print(f"{name:14s} {ratio(name, 'channel'):>8s} {heads:>6s}", flush=True)
