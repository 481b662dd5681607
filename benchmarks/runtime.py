"""Sparse kernels against dense nn.Linear: one table of latency ratios, measured in one run.

For each weight shape (out x in), sparsity (or N:M pattern) and batch, the dense layer and every
available sparse kernel are timed interleaved: after a warm-up, ``--rounds`` rounds (31 by
default) in which each candidate runs once, in an order that rotates every round, with the CPU
caches flushed before every call (dense and sparse alike). Each cell is the median over the rounds
of the *paired* ratio dense time / kernel time of the same round (> 1 is faster), with its first
and third quartiles: two calls a fraction of a second apart see the same load from other
processes, so their ratio is far steadier than a ratio of separately taken medians. Nothing is
dropped or selected: every round counts. The table also gives what ``pk.sparsify`` picks among
the exact kernels with its own rule (fastest median, if >= min_speedup over dense). The ``*_bf16``
and ``*_int8`` kernels store values as bfloat16 or as int8 with a scale per row (inexact; sparsify
uses them only when named) and are compared with the fp32 dense layer; a second table gives their
error on each layer. The last lines say which of issue 13's goals are met, on the paired median,
with the quartiles and the share of rounds at or above the goal, so a thin margin shows. A last
table separates the page size from the kernel: the bitmask kernels keep their arrays in 2 MiB
pages, torch gives a dense weight 4 KiB pages, so dense and kernel are each timed on both.

    python benchmarks/runtime.py             # 4096x4096: 50/70/90/95% and 2:4, batch 1 and 8
    python benchmarks/runtime.py --full      # + 768x768, 3072x768, 11008x4096, 80/98%, batch 64
    python benchmarks/runtime.py --threads 2 # the same grid at 2 threads
    python benchmarks/runtime.py --warm      # without flushing caches between calls
    python benchmarks/runtime.py --row-order # + rows sorted by density (and unsorted at the output)
    python benchmarks/runtime.py --repeats 3 # the whole grid 3 times: the spread between runs

At 1 thread the clock is the calling thread's CPU time, which leaves out the time the OS gave to
other processes (see prunekit.runtime.timing.default_clock); at 2+ threads it is wall-clock.
Caches are flushed before every timed call, as each layer of a model larger than the last-level
cache starts cold.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from prunekit.runtime import DecisionCache, MedianTimer, get_kernel, sparsify, sparsify_report
from prunekit.runtime.kernels import KERNELS
from prunekit.runtime.kernels.hugepages import huge_page_copy
from prunekit.runtime.timing import default_clock, paired_ratios

SHAPES = [(4096, 4096)]
FULL_SHAPES = [(768, 768), (3072, 768), (4096, 4096), (11008, 4096)]
SPARSITIES: list[float | str] = [0.5, 0.7, 0.9, 0.95, "2:4"]
FULL_SPARSITIES: list[float | str] = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, "2:4"]
BATCHES = [1, 8]
MIN_SPEEDUP = 1.1  # sparsify's default margin over dense
#: issue 13's targets at 4096x4096 (sparsity, batch, which kernels) -> minimum ratio to dense
GOALS = {
    (0.5, 1, "exact"): 1.4,
    (0.7, 1, "exact"): 2.2,
    ("2:4", 1, "exact"): 1.4,
    (0.9, 1, "exact"): 3.3,
    (0.95, 1, "exact"): 5.3,
    (0.7, 8, "exact"): 1.2,
    (0.5, 1, "bf16"): 2.5,
}


def pruned_linear(out: int, inp: int, sparsity: float | str, gen: torch.Generator) -> nn.Linear:
    """A Linear with a random mask: exactly ``sparsity`` zeros, or an ``"N:M"`` pattern."""
    lin = nn.Linear(inp, out)
    with torch.no_grad():
        if isinstance(sparsity, str):
            n, m = (int(v) for v in sparsity.split(":"))
            groups = lin.weight.view(out, inp // m, m)  # [out, G, M]
            drop = torch.rand(groups.shape, generator=gen).argsort(-1)[..., n:]
            groups.scatter_(-1, drop, 0.0)
        else:
            w = lin.weight.view(-1)
            drop = torch.randperm(w.numel(), generator=gen)[: round(sparsity * w.numel())]
            w[drop] = 0
    return lin


def value_dtype(kernel: str) -> torch.dtype | None:
    return getattr(get_kernel(kernel), "value_dtype", None)


@torch.no_grad()
def layer_errors(lin: nn.Linear, kernels: list[str], gen: torch.Generator) -> dict[str, float]:
    """Each inexact kernel's max |y - y_fp32| / max |y_fp32| on 8 rows of N(0, 1) inputs."""
    x = torch.randn(8, lin.in_features, generator=gen)
    w = lin.weight.detach()
    ref = F.linear(x, w, lin.bias)
    out = {}
    for k in kernels:
        kernel = get_kernel(k)
        y = kernel.linear(x, kernel.pack(w), lin.bias, tuple(w.shape))
        out[k] = float((y - ref).abs().max() / ref.abs().max())
    return out


def spread(ratios: list[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of paired ratios."""
    if len(ratios) < 2:
        return (ratios[0],) * 3 if ratios else (math.nan,) * 3
    q1, med, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return med, q1, q3


def fixed_rounds(rounds: int, cold: bool) -> MedianTimer:
    """A timer of exactly ``rounds`` rounds, none dropped: every candidate runs in every round."""
    return MedianTimer(
        warmup=2,
        min_rounds=rounds,
        max_rounds=rounds,
        budget_s=0.0,
        drop_factor=math.inf,
        flush=cold,
    )


def run(
    shapes, sparsities, batches, rounds: int, cold: bool, gen: torch.Generator
) -> tuple[list[dict], list[str]]:
    timer = fixed_rounds(rounds, cold)
    kernels = [k for k in KERNELS.names() if get_kernel(k).available()]
    rows = []
    for out, inp in shapes:
        for sp in sparsities:
            lin = pruned_linear(out, inp, sp, gen)
            weight = lin.weight.detach()
            names = [k for k in kernels if get_kernel(k).fits(weight)]
            dense_bytes = weight.numel() * 4
            errors = layer_errors(lin, [k for k in names if not get_kernel(k).exact], gen)
            mem = {
                k: sum(t.numel() * t.element_size() for t in get_kernel(k).pack(weight).values())
                for k in names
            }
            for b in batches:
                # sparsify's own timing and rule; min_sparsity=0 times every cell
                picked = sparsify(
                    lin,
                    b,
                    timer=timer,
                    cache=DecisionCache(),
                    min_sparsity=0.0,
                    min_speedup=MIN_SPEEDUP,
                    kernels=names,
                )
                dec = sparsify_report(picked).layers[0]
                t, samples = dec.candidates, timer.samples
                exact = [k for k in names if get_kernel(k).exact]
                best = min(exact, key=lambda k: t[k])
                pick = best if t["dense"] >= MIN_SPEEDUP * t[best] else "dense"
                paired = {k: paired_ratios(samples, "dense", k) for k in ["dense", *names]}
                bf16 = [k for k in names if value_dtype(k) == torch.bfloat16]
                bf16_best = max(bf16, key=lambda k: statistics.median(paired[k]), default=None)
                rows.append(
                    {
                        "shape": f"{out}x{inp}",
                        "sparsity": sp,
                        "batch": b,
                        "threads": torch.get_num_threads(),
                        "rounds": len(samples["dense"]),
                        "dense_ms": t["dense"] * 1e3,
                        **{f"{k}_ms": t[k] * 1e3 for k in names},
                        # dense time / kernel time, round by round
                        **{f"{k}_paired": paired[k] for k in ["dense", *names]},
                        "picked": pick,
                        "picked_path": get_kernel(pick).label() if pick != "dense" else "dense",
                        "bf16_best": bf16_best,
                        **{f"{k}_err": errors[k] for k in errors},
                        **{f"{k}_mem": mem[k] / dense_bytes for k in names},
                    }
                )
    return rows, kernels


def cell(r: dict, k: str) -> tuple[float, float, float]:
    """(median, q1, q3) of kernel ``k``'s paired ratios in row ``r``."""
    return spread(r[f"{k}_paired"])


def table(rows: list[dict], kernels: list[str], title: str, cold: bool) -> Table:
    tab = Table(title=title)
    for col in ("shape", "sparsity", "batch", "dense"):
        tab.add_column(col, justify="right")
    for k in kernels:
        tab.add_column(k.removeprefix("prunekit_"), justify="right")
    tab.add_column("sparsify picks", justify="left")
    tab.add_column("memory", justify="right")
    last = None
    for r in rows:
        if last is not None and r["shape"] != last:
            tab.add_section()
        last = r["shape"]
        sp = r["sparsity"]
        tab.add_row(
            r["shape"],
            sp if isinstance(sp, str) else f"{sp:.0%}",
            str(r["batch"]),
            f"{r['dense_ms']:.2f} ms",
            *[
                "{:.2f}x {:.2f}-{:.2f}".format(*cell(r, k)) if f"{k}_paired" in r else "-"
                for k in kernels
            ],
            escape(f"{r['picked_path']} {cell(r, r['picked'])[0]:.2f}x"),
            f"{r.get(r['picked'] + '_mem', 1.0):.0%}",
        )
    clock = "thread CPU time" if default_clock() is time.thread_time else "wall-clock time"
    tab.caption = (
        f"each cell: median over {rows[0]['rounds']} interleaved rounds of the paired ratio dense "
        f"time / kernel time ({clock}), then its first-third quartiles; caches flushed before each "
        f"call: {cold}; memory = the packed weight of the pick / dense fp32; *_bf16, *_int8 = "
        "bfloat16 or int8 values (inexact), against fp32 dense"
    )
    return tab


def error_table(rows: list[dict], kernels: list[str]) -> Table:
    inexact = [k for k in kernels if not get_kernel(k).exact]
    tab = Table(title="accuracy cost of the inexact kernels on each layer")
    for col in ("shape", "sparsity", *[k.removeprefix("prunekit_") for k in inexact]):
        tab.add_column(col, justify="right")
    seen = set()
    for r in rows:
        key = (r["shape"], r["sparsity"])
        if key in seen:
            continue
        seen.add(key)
        sp = r["sparsity"]
        tab.add_row(
            r["shape"],
            sp if isinstance(sp, str) else f"{sp:.0%}",
            *[f"{r[f'{k}_err']:.1e}" if f"{k}_err" in r else "-" for k in inexact],
        )
    tab.caption = "max |y - y_fp32| / max |y_fp32| over 8 input rows of N(0, 1)"
    return tab


def row_order(rounds: int, cold: bool) -> Table:
    """The bitmask kernel on a weight whose rows differ in density (5-55% kept, 70% sparse
    overall): rows as they are, against rows sorted by density with the output put back in order
    (the permutation the issue suggests, its undo included)."""
    gen = torch.Generator().manual_seed(1)
    out, inp = 4096, 4096
    keep = torch.rand(out, 1, generator=gen) * 0.5 + 0.05  # [out, 1] each row's density
    w = torch.randn(out, inp, generator=gen) * (torch.rand(out, inp, generator=gen) < keep)
    order = torch.argsort((w != 0).sum(1))
    undo = torch.argsort(order)
    kernel = get_kernel("prunekit_bitmask")
    as_is = kernel.prepare(kernel.pack(w), None, (out, inp))
    by_density = kernel.prepare(kernel.pack(w[order]), None, (out, inp))
    timer = fixed_rounds(rounds, cold)
    tab = Table(title="row order: rows sorted by density (output unsorted) vs as they are")
    for col in ("batch", "as is", "sorted + undo", "ratio"):
        tab.add_column(col, justify="right")
    for b in BATCHES:
        x = torch.randn(b, inp, generator=gen)
        if not torch.allclose(as_is(x), by_density(x)[:, undo], rtol=1e-5, atol=1e-4):
            raise RuntimeError("sorted rows changed the result")
        t = timer({"as is": lambda x=x: as_is(x), "sorted": lambda x=x: by_density(x)[:, undo]})
        ratio = spread(paired_ratios(timer.samples, "as is", "sorted"))
        tab.add_row(
            str(b),
            f"{t['as is'] * 1e3:.2f} ms",
            f"{t['sorted'] * 1e3:.2f} ms",
            "{:.2f}x {:.2f}-{:.2f}".format(*ratio),
        )
    tab.caption = (
        "ratio: paired median (quartiles) of as-is time / sorted time; > 1: sorting pays; "
        "4096x4096, 70% sparse, 1 thread unless --threads"
    )
    return tab


#: (kernel, sparsity) of the page-size table
PAGE_CELLS = [("prunekit_bitmask", 0.5), ("prunekit_bitmask", 0.7), ("prunekit_bitmask_bf16", 0.5)]


def page_sizes(rounds: int, cold: bool) -> Table:
    """How much of the batch-1 speed-up is the page size: the kernels keep arrays of >= 2 MiB in
    huge pages (kernels/hugepages.py), while torch gives dense weights 4 KiB pages. Dense and the
    kernel each on 4 KiB and on huge pages, paired, 4096x4096."""
    gen = torch.Generator().manual_seed(2)
    timer = fixed_rounds(rounds, cold)
    tab = Table(title="page size: dense and kernel on 4 KiB pages (torch's) and on 2 MiB pages")
    cols = ("kernel", "sparsity", "dense", "dense 2M", "kernel 4K", "kernel 2M", "2M vs dense 2M")
    for col in cols:
        tab.add_column(col, justify="right")
    x = torch.randn(1, 4096, generator=gen)
    for name, sp in PAGE_CELLS:
        kernel = get_kernel(name)
        if not kernel.available():
            continue
        w = pruned_linear(4096, 4096, sp, gen).weight.detach()
        w_huge = huge_page_copy(w)
        packed = kernel.pack(w)  # huge pages
        small = {k: t.clone() for k, t in packed.items()}  # the same arrays on 4 KiB pages
        runs = {
            "dense": lambda w=w: F.linear(x, w),
            "dense 2M": lambda w=w_huge: F.linear(x, w),
            "kernel 4K": kernel.prepare(small, None, (4096, 4096)),
            "kernel 2M": kernel.prepare(packed, None, (4096, 4096)),
        }
        if not torch.equal(runs["kernel 4K"](x), runs["kernel 2M"](x)):
            raise RuntimeError("the huge-page copy changed the result")
        t = timer({k: (lambda f=f: f(x)) if k.startswith("kernel") else f for k, f in runs.items()})
        ratio = {k: spread(paired_ratios(timer.samples, "dense", k)) for k in list(runs)[1:]}
        vs_huge = spread(paired_ratios(timer.samples, "dense 2M", "kernel 2M"))
        tab.add_row(
            name.removeprefix("prunekit_"),
            f"{sp:.0%}",
            f"{t['dense'] * 1e3:.2f} ms",
            *["{:.2f}x {:.2f}-{:.2f}".format(*ratio[k]) for k in ratio],
            "{:.2f}x {:.2f}-{:.2f}".format(*vs_huge),
        )
    tab.caption = (
        "paired medians (quartiles) of dense time / time, batch 1, 1 thread unless --threads; the "
        "last column: dense on 2 MiB pages / kernel on 2 MiB pages"
    )
    return tab


def goal_lines(runs: list[list[dict]]) -> list[str]:
    """One line per goal of issue 13: each run's paired median (quartiles, share of rounds at or
    above the goal); ok only if every run's median meets it."""
    lines = []
    for i, r in enumerate(runs[0]):
        if r["shape"] != "4096x4096":
            continue
        for which in ("exact", "bf16"):
            goal = GOALS.get((r["sparsity"], r["batch"], which))
            if goal is None:
                continue
            got = []
            for rows in runs:
                k = rows[i]["picked"] if which == "exact" else rows[i]["bf16_best"]
                if k is not None:
                    ratios = rows[i][f"{k}_paired"]
                    share = sum(x >= goal for x in ratios) / len(ratios)
                    got.append((k, *cell(rows[i], k), share))
            if not got:
                continue
            sp = r["sparsity"] if isinstance(r["sparsity"], str) else f"{r['sparsity']:.0%}"
            ok = "ok" if all(g[1] >= goal for g in got) else "MISSED"
            runs_text = "; ".join(
                f"{k.removeprefix('prunekit_')} {m:.2f}x ({q1:.2f}-{q3:.2f}, {share:.0%} of rounds)"
                for k, m, q1, q3, share in got
            )
            lines.append(f"goal 4096x4096 {sp} batch {r['batch']} >= {goal}x: {runs_text} {ok}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="more shapes, sparsities and batch 64")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--rounds", type=int, default=31, help="interleaved rounds per cell (31)")
    p.add_argument(
        "--repeats", type=int, default=1, help="time the whole grid this many times (spread)"
    )
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument(
        "--row-order", action="store_true", help="also time rows sorted by density (bitmask)"
    )
    p.add_argument(
        "--warm",
        action="store_true",
        help="keep caches warm between calls (default: flush them, as inside a large model)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shapes, sparsities, batches = SHAPES, SPARSITIES, BATCHES
    if args.full:
        shapes, sparsities, batches = FULL_SHAPES, FULL_SPARSITIES, [1, 8, 64]
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    console = Console(width=220)
    runs = []
    for i in range(args.repeats):
        # the same weights and inputs every repeat: what differs is only the timing
        gen = torch.Generator().manual_seed(0)
        rows, kernels = run(shapes, sparsities, batches, args.rounds, not args.warm, gen)
        runs.append(rows)
        title = (
            f"sparse vs dense nn.Linear, fp32, {args.threads} thread(s), torch {torch.__version__}"
            + (f", run {i + 1} of {args.repeats}" if args.repeats > 1 else "")
        )
        console.print(table(rows, kernels, title, not args.warm))
    console.print(error_table(runs[0], kernels))
    if args.row_order:
        console.print(row_order(args.rounds, not args.warm))
    console.print(page_sizes(args.rounds, not args.warm))
    for line in goal_lines(runs):
        console.print(escape(line))
    console.print(
        f"took {time.perf_counter() - start:.0f} s; load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
