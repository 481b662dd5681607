"""``prunekit eval``: the quality of a pruned model next to the model it was pruned from."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._model_options import add_model_options
from .base import COMMANDS, Command
from .bench import load_baseline, load_pruned, recorded


def read_eval_texts(name: str, whole: bool) -> tuple[list[str], list[Any] | None]:
    """Texts (and labels, when every JSONL object has a ``label``) of ``--text``.

    Each text is one item: a JSONL line, or a non-empty line of a ``.txt`` file; with ``whole``
    (perplexity) a ``.txt`` file is one text.
    """
    from ..errors import PrunekitError
    from ..textdata import corpus_texts, jsonl_records

    path = Path(name)
    if name.startswith("builtin:") or whole or path.suffix.lower() != ".jsonl":
        texts = corpus_texts(name)
        if path.suffix.lower() == ".txt" and not whole:
            texts = [line.strip() for t in texts for line in t.splitlines() if line.strip()]
        return texts, None
    records = jsonl_records(path)
    texts = [text for text, _ in records]
    labels = [item.get("label") if isinstance(item, dict) else None for _, item in records]
    if not texts:
        raise PrunekitError(f"{path} holds no text")
    return texts, labels if all(label is not None for label in labels) else None


def tokenizer_for(*folders: str | None) -> Any:
    """The tokenizer of the first of ``folders`` that holds one (offline)."""
    import os

    from ..errors import PrunekitError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        if not any(
            (Path(folder) / n).is_file()
            for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
        ):
            continue
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    raise PrunekitError("no tokenizer: eval needs a Hugging Face model folder with tokenizer files")


@COMMANDS.register("eval", examples=(["--help"],))  # argv
class EvalCommand(Command):
    """Measure the quality of a pruned model against the model it was pruned from.

    Causal LMs: perplexity over --text (windows of --seq-len tokens). Encoders: the mean cosine
    and top-1 nearest-neighbour agreement of mean-pooled sentence embeddings against the
    baseline's. Sequence classifiers with labels (a JSONL "label" per text): accuracy.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_options(
            parser, baseline="the unpruned model (default: the one prunekit prune recorded)"
        )
        parser.add_argument(
            "--text",
            default="builtin:docstrings-eval",
            metavar="FILE.txt|.jsonl",
            help="texts to evaluate on: .txt (one per line; perplexity: the whole file), .jsonl "
            '("text", optional "label"), or builtin:docstrings-eval (512 sentences of stdlib '
            "docstrings, disjoint from builtin:docstrings; the default)",
        )
        parser.add_argument(
            "--task",
            choices=("auto", "perplexity", "embedding", "accuracy"),
            default="auto",
            help="what to measure (default auto: perplexity for causal LMs, accuracy for "
            "classifiers given labels, else embedding agreement)",
        )
        parser.add_argument(
            "--seq-len",
            type=int,
            default=None,
            help="tokens per perplexity window (default: the context, at most 2048) or per "
            "sentence (default 128)",
        )
        parser.add_argument(
            "--batch-size", type=int, default=64, help="texts per batch (default 64)"
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from ..errors import PrunekitError
        from ..evaluate import compare, task_of

        if args.batch_size < 1 or (args.seq_len is not None and args.seq_len < 2):
            raise PrunekitError("--batch-size must be positive and --seq-len at least 2")
        header = recorded(args.model)
        model = load_pruned(args)
        baseline, baseline_spec = load_baseline(args, header)
        tokenizer = tokenizer_for(args.model, baseline_spec)
        task = args.task
        texts, labels = read_eval_texts(args.text, whole=task == "perplexity")
        if task == "auto":
            task = task_of(model, labels)
            if task == "perplexity":  # a .txt file is one text, not one per line
                texts, labels = read_eval_texts(args.text, whole=True)
        if task == "embedding" and baseline is None:
            raise PrunekitError(
                "embedding agreement compares with the unpruned model: pass --baseline MODEL"
            )
        result = compare(
            model, texts, baseline=baseline, tokenizer=tokenizer, labels=labels, task=task,
            seq_len=args.seq_len, batch_size=args.batch_size,
        )  # fmt: skip
        result["baseline"] = baseline_spec
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        print(format_result(result))
        return 0


def format_result(r: dict[str, Any]) -> str:
    """One line per figure, pruned next to baseline."""
    if r["task"] == "perplexity":
        line = f"perplexity {r['perplexity']:.3f}"
        if "baseline_perplexity" in r:
            line += f" (baseline {r['baseline_perplexity']:.3f}, {r['ratio']:.3f}x)"
    elif r["task"] == "accuracy":
        line = f"accuracy {r['accuracy']:.2%}"
        if "baseline_accuracy" in r:
            line += f" (baseline {r['baseline_accuracy']:.2%})"
    else:
        line = (
            f"embedding cosine vs baseline {r['cosine']:.3f}, "
            f"top-1 neighbour agreement {r['top1']:.3f}"
        )
    return f"{line} on {r['texts']} texts"
