"""Sparse inference against dense: one table of latency ratios, measured in one run.

For each weight shape (out x in), sparsity and batch, ``pk.sparsify`` times the dense layer and
every sparse kernel (``torch_csr`` = torch.sparse CSR / MKL, ``prunekit_csr`` = the compiled
uint16-index CSR) interleaved, medians over rounds; the table shows those times, each kernel's
ratio against dense (> 1 is faster), and what sparsify picked. Ratios, not absolute times, are
the result: they are measured side by side, so machine load mostly cancels.

    python benchmarks/runtime.py             # full grid, 1 thread (about 5 minutes)
    python benchmarks/runtime.py --quick     # 2 shapes, 3 sparsities, batch 1 and 8
    python benchmarks/runtime.py --threads 2 # the same grid at 2 threads
    python benchmarks/runtime.py --warm      # without flushing caches between calls

At 1 thread the clock is the calling thread's CPU time, which leaves out the time the OS gave to
other processes (see prunekit.runtime.timing.default_clock); at 2+ threads it is wall-clock.
Caches are flushed before every timed call, as each layer of a model larger than the last-level
cache starts cold.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from prunekit.runtime import DecisionCache, MedianTimer, get_kernel, sparsify, sparsify_report
from prunekit.runtime.kernels import KERNELS
from prunekit.runtime.timing import default_clock

SHAPES = [(768, 768), (3072, 768), (4096, 4096), (11008, 4096)]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
BATCHES = [1, 8, 64]
GOALS = {0.5: 0.95, 0.9: 2.5, 0.95: 4.0}  # batch 1, 4096x4096 and 11008x4096


def pruned_linear(out: int, inp: int, sparsity: float, gen: torch.Generator) -> nn.Linear:
    """A Linear with a random unstructured mask of exactly ``sparsity``."""
    lin = nn.Linear(inp, out)
    with torch.no_grad():
        w = lin.weight.view(-1)
        drop = torch.randperm(w.numel(), generator=gen)[: round(sparsity * w.numel())]
        w[drop] = 0
    return lin


def run(shapes, sparsities, batches, budget: float, cold: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    timer = MedianTimer(warmup=2, min_rounds=7, max_rounds=41, budget_s=budget, flush=cold)
    kernels = [k for k in KERNELS.names() if get_kernel(k).available()]
    rows = []
    for out, inp in shapes:
        for sp in sparsities:
            lin = pruned_linear(out, inp, sp, gen)
            dense_bytes = lin.weight.numel() * 4
            packed = {k: get_kernel(k).pack(lin.weight.detach()) for k in kernels}
            mem = {
                k: sum(t.numel() * t.element_size() for t in p.values()) for k, p in packed.items()
            }
            for b in batches:
                # min_sparsity=0: time every cell, even 50%; the choice rule is sparsify's own
                picked = sparsify(
                    lin, b, timer=timer, cache=DecisionCache(), min_sparsity=0.0, kernels=kernels
                )
                dec = sparsify_report(picked).layers[0]
                t = dec.candidates
                rows.append(
                    {
                        "shape": f"{out}x{inp}",
                        "sparsity": sp,
                        "batch": b,
                        "threads": torch.get_num_threads(),
                        "dense_ms": t["dense"] * 1e3,
                        **{f"{k}_ms": t[k] * 1e3 for k in kernels},
                        **{f"{k}_x": t["dense"] / t[k] for k in kernels},
                        "picked": dec.kernel,
                        "picked_x": t["dense"] / t[dec.kernel],
                        **{f"{k}_mem": mem[k] / dense_bytes for k in kernels},
                    }
                )
    return rows


def table(rows: list[dict], kernels: list[str], title: str, cold: bool) -> Table:
    tab = Table(title=title)
    for col in ("shape", "sparsity", "batch", "dense"):
        tab.add_column(col, justify="right")
    for k in kernels:
        tab.add_column(k, justify="right")
    tab.add_column("sparsify picks", justify="left")
    tab.add_column("memory", justify="right")
    last = None
    for r in rows:
        if last is not None and r["shape"] != last:
            tab.add_section()
        last = r["shape"]
        tab.add_row(
            r["shape"],
            f"{r['sparsity']:.0%}",
            str(r["batch"]),
            f"{r['dense_ms']:.3f} ms",
            *[f"{r[f'{k}_ms']:.3f} ms {r[f'{k}_x']:5.2f}x" for k in kernels],
            f"{r['picked']} {r['picked_x']:.2f}x",
            f"{min(r[f'{k}_mem'] for k in kernels):.0%}",
        )
    clock = "thread CPU time" if default_clock() is time.thread_time else "wall-clock time"
    tab.caption = (
        f"ratio = dense time / kernel time, interleaved in this run, medians of {clock}; "
        f"caches flushed before each call: {cold}; memory = smallest packed weight / dense fp32"
    )
    return tab


def goal_lines(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        goal = GOALS.get(r["sparsity"])
        if r["batch"] == 1 and goal and r["shape"] in ("4096x4096", "11008x4096"):
            ok = "ok" if r["picked_x"] >= goal else "MISSED"
            lines.append(
                f"goal {r['shape']} {r['sparsity']:.0%} batch 1: sparsify {r['picked_x']:.2f}x "
                f"(goal >= {goal}x) {ok}"
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small grid (about a minute)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--budget", type=float, default=0.4, help="seconds of timing per cell")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument(
        "--warm",
        action="store_true",
        help="keep caches warm between calls (default: flush them, as inside a large model)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shapes, sparsities, batches = SHAPES, SPARSITIES, BATCHES
    if args.quick:
        shapes, sparsities, batches = [SHAPES[0], SHAPES[2]], [0.5, 0.9, 0.95], [1, 8]
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    rows = run(shapes, sparsities, batches, args.budget, not args.warm)
    kernels = [k for k in KERNELS.names() if f"{k}_ms" in rows[0]]
    console = Console(width=160)
    console.print(
        table(
            rows,
            kernels,
            f"sparse vs dense nn.Linear, fp32, {args.threads} thread(s), torch {torch.__version__}",
            not args.warm,
        )
    )
    for line in goal_lines(rows):
        console.print(line)
    console.print(
        f"took {time.perf_counter() - start:.0f} s; load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
