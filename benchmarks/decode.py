"""End to end: greedy decoding of SmolLM2-135M after ``pk.sparsify``, against dense kernels.

For each pruning (magnitude, per layer, every linear but ``lm_head``: 50%, 70% unstructured, 2:4),
the pruned model runs twice: with its dense layers (the "dense" baseline: the same weights, zeros
multiplied) and after ``pk.sparsify`` (example inputs: one token, as each decode step sees).
Both decode the same prompt greedily, token by token with the KV cache, at batch 1 and 1 thread;
the two runs alternate ``--repeats`` times and each decode step is timed with the thread's CPU
time (other processes' load mostly cancels). The table gives decode tokens/s (median of the
runs, best in brackets), the ratio, whether the greedy tokens are identical, and the largest
logit difference. The ``+bf16`` and ``+int8`` rows also let sparsify use the bfloat16-value or
the int8-value (per-row scale) kernels, which are inexact: their token agreement and logit
difference are their accuracy cost. The last lines say whether issue 13's decode goal is met.

    python benchmarks/decode.py                 # 50%, 70%, 2:4, 50% +bf16, 50% +int8; 32 tokens
    python benchmarks/decode.py --tokens 64 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import prunekit as pk
from prunekit.pretrained import load_smollm2
from prunekit.runtime import KERNELS, DecisionCache, get_kernel, sparsify_report

PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number, computed iteratively."""\n'
#: label -> (sparsity, granularity, the value dtype of the inexact kernels also allowed, if any)
CONFIGS: dict[str, tuple[float, str, torch.dtype | None]] = {
    "50%": (0.5, "unstructured", None),
    "70%": (0.7, "unstructured", None),
    "2:4": (0.5, "2:4", None),
    "50% +bf16": (0.5, "unstructured", torch.bfloat16),
    "50% +int8": (0.5, "unstructured", torch.int8),
}
#: issue 13: decode tokens/s of SmolLM2-135M at 50% unstructured against dense, batch 1, 1 thread
GOAL = ("50%", 1.3)


@torch.inference_mode()
def decode(model, prompt_ids: torch.Tensor, tokens: int) -> tuple[list[int], torch.Tensor, list]:
    """Greedy tokens, their logits [tokens, vocab] and the thread-CPU seconds of each step."""
    out = model(input_ids=prompt_ids, use_cache=True)
    past, logits = out.cache, [out.logits[0, -1]]  # transformers 5 names the KV cache "cache"
    ids, steps = [int(out.logits[0, -1].argmax())], []
    for _ in range(tokens - 1):
        t0 = time.thread_time()
        out = model(input_ids=torch.tensor([[ids[-1]]]), cache=past, use_cache=True)
        steps.append(time.thread_time() - t0)
        past = out.cache
        logits.append(out.logits[0, -1])
        ids.append(int(out.logits[0, -1].argmax()))
    return ids, torch.stack(logits), steps


def same_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two greedy runs share before they first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def kernels_for(inexact: torch.dtype | None) -> list[str] | None:
    """sparsify's candidates: its default (exact kernels), or those plus the inexact kernels
    storing ``inexact`` values."""
    if inexact is None:
        return None
    kernels = [get_kernel(k) for k in KERNELS.names()]
    return [
        k.name
        for k in kernels
        if k.available() and (k.exact or getattr(k, "value_dtype", None) == inexact)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32, help="new tokens per run")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per model")
    p.add_argument("--configs", default=",".join(CONFIGS), help="which rows, comma separated")
    args = p.parse_args()
    torch.set_num_threads(1)
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    base, tok = load_smollm2()
    prompt = tok(PROMPT, return_tensors="pt")["input_ids"]
    console = Console(width=160)
    tab = Table(title=f"SmolLM2-135M greedy decode, batch 1, 1 thread, {args.tokens} tokens")
    for col in ("pruning", "dense tok/s", "sparse tok/s", "speedup", "layers swapped"):
        tab.add_column(col, justify="right")
    for col in ("kernels", "same tokens", "max |dlogit|"):
        tab.add_column(col, justify="left" if col == "kernels" else "right")
    speedups = {}
    for label in args.configs.split(","):
        sparsity, granularity, inexact = CONFIGS[label]
        dense = copy.deepcopy(base)
        pk.prune(dense, sparsity, granularity=granularity, exclude=["lm_head"])
        pk.finalize(dense)
        sparse = pk.sparsify(
            copy.deepcopy(dense),
            example_inputs={"input_ids": prompt[:, :1]},
            kernels=kernels_for(inexact),
            cache=DecisionCache(),
        )
        rep = sparsify_report(sparse)
        runs: dict[str, list[float]] = {"dense": [], "sparse": []}
        results = {}
        for _ in range(args.repeats):
            for name, model in (("dense", dense), ("sparse", sparse)):
                ids, logits, steps = decode(model, prompt, args.tokens)
                runs[name].append(len(steps) / sum(steps))
                results[name] = ids, logits
        used: dict[str, int] = {}
        for r in rep.layers:
            if r.swapped:
                used[r.code_path] = used.get(r.code_path, 0) + 1
        (dense_ids, dense_logits), (sparse_ids, sparse_logits) = results["dense"], results["sparse"]
        d, s = statistics.median(runs["dense"]), statistics.median(runs["sparse"])
        speedups[label] = s / d
        same = same_prefix(dense_ids, sparse_ids)
        # logits of the steps both runs took from the same context
        dlogit = float((dense_logits[: same + 1] - sparse_logits[: same + 1]).abs().max())
        tab.add_row(
            label,
            f"{d:.1f} ({max(runs['dense']):.1f})",
            f"{s:.1f} ({max(runs['sparse']):.1f})",
            f"{s / d:.2f}x ({max(runs['sparse']) / max(runs['dense']):.2f})",
            f"{sum(used.values())}/{len(rep.layers)}",
            escape(", ".join(f"{k} x{v}" for k, v in sorted(used.items())) or "-"),
            f"{same}/{len(dense_ids)}",
            f"{dlogit:.2e}",
        )
        console.print(
            f"{label}: sparsify model speedup (1-token forward) "
            f"{rep.realized_model_speedup or 1.0:.2f}x, weights {rep.memory_ratio:.0%} of dense"
        )
        del dense, sparse
    tab.caption = (
        "tokens/s: median over runs (best in brackets), thread CPU time of the decode steps; "
        "dense = the same pruned weights in nn.Linear; same tokens / max |dlogit|: sparse "
        "against dense (tokens before the first difference; logits of steps from the same context)"
    )
    console.print(tab)
    label, goal = GOAL
    if label in speedups:
        ok = "ok" if speedups[label] >= goal else "MISSED"
        console.print(
            f"goal SmolLM2-135M {label} decode, batch 1: {speedups[label]:.2f}x (>= {goal}x) {ok}"
        )
    console.print(
        f"took {time.perf_counter() - start:.0f} s; load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
