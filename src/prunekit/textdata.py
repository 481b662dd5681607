"""Text calibration files for language models: ``.txt`` (one text) or ``.jsonl`` (one JSON object
per line with a ``"text"`` field, or a JSON string), tokenized into fixed-length windows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError


def jsonl_records(path: Path) -> list[tuple[str, Any]]:
    """``(text, item)`` per non-blank line of a JSONL file: each line a JSON string or an object
    with a ``"text"`` field; a malformed line raises ConfigError naming it."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ConfigError(f"{path}:{number}: expected a string or an object with 'text'")
        records.append((text, item))
    return records


def read_texts(path: str | Path) -> list[str]:
    """The texts in a ``.txt`` or ``.jsonl`` file; empty or malformed files raise ConfigError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise ConfigError(f"calibration file {path} must be .txt or .jsonl, not {suffix or '?'}")
    if suffix == ".txt":
        texts = [path.read_text(encoding="utf-8")]
    else:
        texts = [text for text, _ in jsonl_records(path)]
    if not any(t.strip() for t in texts):
        raise ConfigError(f"calibration file {path} holds no text")
    return texts


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text (BERT: [CLS], [SEP]; GPT-2: none)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare) :])
    return [], []


def load_calibration(
    path: str | Path, tokenizer: Any, n: int = 128, seqlen: int = 512, batch_size: int = 8
) -> list[dict[str, torch.Tensor]]:
    """Up to ``n`` windows of ``seqlen`` tokens from a text file (or a built-in corpus, see
    :func:`corpus_texts`), as batches of
    ``{"input_ids": [B, seqlen], "attention_mask": [B, seqlen]}``.

    The texts are joined by blank lines and tokenized once; each window gets the tokenizer's
    special tokens (BERT's [CLS] ... [SEP], Llama's BOS, none for GPT-2) within ``seqlen``.
    """
    if n < 1 or seqlen < 2 or batch_size < 1:
        raise ConfigError("calibration needs n >= 1, seqlen >= 2 and batch_size >= 1")
    from .evaluate import token_windows

    prefix, suffix = special_tokens(tokenizer)
    body = token_windows(corpus_texts(path), tokenizer, seqlen - len(prefix) - len(suffix), n)
    rows = body.shape[0]
    ids = torch.cat(
        [
            torch.tensor(prefix, dtype=torch.long).expand(rows, -1),
            body,
            torch.tensor(suffix, dtype=torch.long).expand(rows, -1),
        ],
        dim=1,
    )  # [n, seqlen]
    return [
        {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
        for chunk in ids.split(batch_size)
    ]


#: built-in corpora (offline English: Python standard-library docstrings), named instead of a file
BUILTIN_CORPORA = ("builtin:docstrings", "builtin:docstrings-eval")


def corpus_texts(name_or_path: str | Path) -> list[str]:
    """The texts of a ``.txt``/``.jsonl`` file, or of a built-in corpus: ``builtin:docstrings``
    (calibration docstrings) or ``builtin:docstrings-eval`` (disjoint evaluation sentences)."""
    from .evaluate import CALIBRATION_MODULES, EVALUATION_MODULES, docstring_corpus, sentences

    name = str(name_or_path)
    if name == "builtin:docstrings":
        return docstring_corpus(CALIBRATION_MODULES)
    if name == "builtin:docstrings-eval":
        return sentences(docstring_corpus(EVALUATION_MODULES))[:512]
    if name.startswith("builtin:"):
        raise ConfigError(
            f"unknown corpus {name!r}; built-in corpora: {', '.join(BUILTIN_CORPORA)}"
        )
    return read_texts(name)


#: what ``--loss`` may be: the language-modelling loss a Hugging Face head computes from labels
LOSSES = ("lm", "mlm")


def add_labels(
    batches: list[dict[str, torch.Tensor]], loss: str, tokenizer: Any, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Calibration batches that make a Hugging Face model compute its own loss (``output.loss``),
    for the gradient criteria (``obd``, ``taylor``).

    ``lm``: causal language modelling (``labels = input_ids``; padding ignored). ``mlm``: 15% of
    the non-special tokens, chosen with ``seed``, replaced by the mask token and predicted.
    """
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; valid choices: {', '.join(LOSSES)}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]
        if loss == "lm":
            out.append({**b, "labels": ids.masked_fill(mask == 0, -100)})
            continue
        if tokenizer.mask_token_id is None:
            raise ConfigError("--loss mlm needs a tokenizer with a mask token")
        special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=ids.dtype)
        maskable = (mask == 1) & ~torch.isin(ids, special)
        chosen = maskable & (torch.rand(ids.shape, generator=gen) < 0.15)
        out.append(
            {
                **b,
                "input_ids": ids.masked_fill(chosen, tokenizer.mask_token_id),
                "labels": ids.masked_fill(~chosen, -100),
            }
        )
    return out
