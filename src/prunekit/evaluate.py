"""Quality measurements of a pruned model against text: ``pk.evaluate.perplexity`` for causal
language models, :func:`embedding_agreement` for sentence encoders, and a small offline English
corpus (:func:`docstring_corpus`) to calibrate and evaluate with."""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .calibrate import as_batches, calibration_mode, model_device, run_batch
from .errors import ConfigError


def _load_tokenizer(model: nn.Module) -> Any:
    path = getattr(getattr(model, "config", None), "name_or_path", None)
    if not path:
        raise ConfigError("texts need a tokenizer: pass tokenizer=... (or token-id batches)")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(
            "tokenizing texts needs transformers: pip install 'prunekit[hf]'"
        ) from None
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def token_windows(
    texts: Sequence[str], tokenizer: Any, seqlen: int, n: int | None = None
) -> torch.Tensor:
    """The texts joined by blank lines, tokenized once and cut into ``[windows, seqlen]`` ids."""
    # the joined corpus is longer than the model's window on purpose: no "too long" warning
    quiet = {"verbose": False} if "verbose" in inspect.signature(tokenizer).parameters else {}
    enc = tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt", **quiet)
    ids = enc["input_ids"].reshape(-1)
    count = ids.numel() // seqlen if n is None else min(n, ids.numel() // seqlen)
    if count == 0:
        raise ConfigError(f"the texts hold {ids.numel()} tokens, fewer than one window of {seqlen}")
    return ids[: count * seqlen].view(count, seqlen)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    texts_or_batches: Sequence[str] | Iterable[Any],
    tokenizer: Any = None,
    seqlen: int | None = None,
    batch_size: int = 1,
) -> float:
    """exp(mean next-token negative log-likelihood) of a causal LM.

    ``texts_or_batches`` is either a list of strings (joined, tokenized, cut into windows of
    ``seqlen`` tokens; default: the model's context length, at most 2048) or batches of token ids
    (tensors ``[B, T]``, or dicts with ``input_ids`` and optionally ``attention_mask``; padded
    positions are not scored). The model must return logits (``.logits`` or a tensor).
    """
    items = list(texts_or_batches) if not isinstance(texts_or_batches, torch.Tensor) else None
    if items is not None and items and all(isinstance(t, str) for t in items):
        tokenizer = tokenizer or _load_tokenizer(model)
        if seqlen is None:
            config = getattr(model, "config", None)
            seqlen = min(getattr(config, "max_position_embeddings", 2048) or 2048, 2048)
        windows = token_windows(items, tokenizer, seqlen)
        texts_or_batches = list(windows.split(batch_size))
    batches = as_batches(texts_or_batches)
    device = model_device(model)
    nll, count = 0.0, 0
    with calibration_mode(model):
        for i, (args, kwargs) in enumerate(batches):
            ids = args[0] if args else kwargs.get("input_ids")
            if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
                raise ConfigError(f"batch {i}: expected token ids [batch, tokens] or input_ids")
            mask = kwargs.get("attention_mask")
            out = run_batch(model, (args, kwargs), i, device)
            logits = out.logits if hasattr(out, "logits") else out
            if not isinstance(logits, torch.Tensor) or logits.shape[:2] != ids.shape:
                raise ConfigError(f"batch {i}: the model returned no [batch, tokens, vocab] logits")
            target = ids[:, 1:].to(device)
            losses = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                reduction="none",
            )
            if mask is not None:
                keep = mask[:, 1:].to(device).reshape(-1).bool()
                losses = losses[keep]
            nll += float(losses.sum())
            count += losses.numel()
    if count == 0:
        raise ConfigError("no tokens to score: every batch has fewer than two tokens")
    return math.exp(nll / count)


@torch.no_grad()
def mean_pooled(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Mean-pooled last hidden states (over ``attention_mask``) of an encoder, ``[N, hidden]``."""
    device = model_device(model)
    out = []
    with calibration_mode(model):
        for i, batch in enumerate(as_batches(batches)):
            hidden = run_batch(model, batch, i, device)[0]  # [B, T, hidden]
            mask = batch[1]["attention_mask"].to(device).unsqueeze(-1).float()
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    return torch.cat(out).float()


def embedding_agreement(dense: torch.Tensor, pruned: torch.Tensor) -> dict[str, float]:
    """How well pruned embeddings ``[N, d]`` agree with dense ones.

    ``cosine``: mean cosine between each text's dense and pruned embedding. ``top1``: fraction of
    texts whose nearest other text (by cosine) is the same in both spaces.
    """
    cos = F.cosine_similarity(dense, pruned, dim=-1).mean().item()

    def nearest(e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e, dim=-1)
        sim = e @ e.t()
        sim.fill_diagonal_(-float("inf"))
        return sim.argmax(-1)

    top1 = (nearest(dense) == nearest(pruned)).float().mean().item()
    return {"cosine": cos, "top1": top1}


#: standard-library modules whose docstrings make the calibration / evaluation corpora
CALIBRATION_MODULES = (
    "argparse", "collections", "logging", "pathlib", "subprocess", "threading", "email.message",
    "http.client", "json", "csv", "tarfile", "zipfile", "shutil", "tempfile", "datetime",
    "decimal", "fractions", "random", "statistics", "functools", "itertools", "inspect",
    "typing", "dataclasses", "enum", "unittest", "doctest", "pdb", "pickle", "configparser",
)  # fmt: skip
EVALUATION_MODULES = (
    "asyncio", "socket", "ssl", "sqlite3", "xml.dom.minidom", "urllib.request", "smtplib",
    "ftplib", "imaplib", "calendar", "textwrap", "difflib", "heapq", "bisect", "queue",
    "sched", "selectors", "mailbox", "gettext", "locale", "codecs", "string", "re", "os",
)  # fmt: skip


def docstring_corpus(modules: Sequence[str], min_chars: int = 80) -> list[str]:
    """Docstrings (module, classes, functions, methods) of stdlib ``modules``: offline English.

    Whitespace is collapsed; duplicates and docstrings shorter than ``min_chars`` are dropped.
    The order is deterministic.
    """
    seen, texts = set(), []
    for name in modules:
        module = importlib.import_module(name)
        objs = [module]
        for _, obj in sorted(vars(module).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == name:
                objs.append(obj)
                if inspect.isclass(obj):
                    objs += [v for _, v in sorted(vars(obj).items()) if inspect.isfunction(v)]
        for obj in objs:
            doc = inspect.getdoc(obj) or ""
            doc = re.sub(r"\s+", " ", doc).strip()
            if len(doc) >= min_chars and doc.isascii() and doc not in seen:
                seen.add(doc)
                texts.append(doc)
    return texts


def sentences(texts: Sequence[str], min_chars: int = 40) -> list[str]:
    """The distinct sentences of ``texts`` (split after ``.``, ``!`` or ``?``), in order."""
    seen: dict[str, None] = {}
    for text in texts:
        for sentence in re.split(r"(?<=[.!?]) ", text):
            if len(sentence) >= min_chars:
                seen.setdefault(sentence, None)
    return list(seen)


# ---- pk.evaluate(model, texts, baseline=...) ---------------------------------------------------

TASKS = ("auto", "perplexity", "embedding", "accuracy")


def is_causal_lm(model: nn.Module) -> bool:
    """A Hugging Face model that predicts the next token (transformers' causal-LM classes)."""
    name = type(model).__name__
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return name.endswith("ForCausalLM")
    return name.endswith("ForCausalLM") or name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def _is_classifier(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def task_of(model: nn.Module, labels: Sequence[Any] | None) -> str:
    """What quality means for ``model``: perplexity (causal LMs), accuracy (classifiers given
    labels), else the agreement of its sentence embeddings with the baseline's."""
    if is_causal_lm(model):
        return "perplexity"
    if labels is not None and _is_classifier(model):
        return "accuracy"
    return "embedding"


def length_batches(
    texts: Sequence[str], tokenizer: Any, batch_size: int = 64, max_length: int = 128
) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """Texts batched by token length (little padding), in a fixed order; and that order."""
    order = sorted(range(len(texts)), key=lambda i: (len(tokenizer.tokenize(texts[i])), texts[i]))
    batches = [
        dict(tokenizer([texts[i] for i in order[s : s + batch_size]], padding=True,
                       truncation=True, max_length=max_length, return_tensors="pt"))
        for s in range(0, len(order), batch_size)
    ]  # fmt: skip
    return batches, order


@torch.no_grad()
def _accuracy(model: nn.Module, batches: list[dict], labels: list[int]) -> float:
    device = model_device(model)
    preds = []
    with calibration_mode(model):
        for i, batch in enumerate(as_batches(batches)):
            out = run_batch(model, batch, i, device)
            logits = out.logits if hasattr(out, "logits") else out
            preds.append(logits.argmax(-1).cpu())
    return float((torch.cat(preds) == torch.tensor(labels)).float().mean())


def _label_ids(model: nn.Module, labels: Sequence[Any]) -> list[int]:
    mapping = getattr(getattr(model, "config", None), "label2id", None) or {}
    out = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise ConfigError(f"labels must be class indices or names, got {label!r}")
        if isinstance(label, str):
            if label not in mapping:
                raise ConfigError(
                    f"label {label!r} is not one of the model's labels {sorted(mapping)}"
                )
            label = mapping[label]
        out.append(int(label))
    return out


def compare(
    model: nn.Module,
    texts: Sequence[str],
    *,
    baseline: nn.Module | None = None,
    tokenizer: Any = None,
    labels: Sequence[Any] | None = None,
    task: str = "auto",
    seq_len: int | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """The quality of ``model`` on ``texts``, next to ``baseline``'s (the unpruned model).

    - ``perplexity`` (causal LMs): the texts joined and cut into windows of ``seq_len`` tokens;
      ``perplexity`` and ``baseline_perplexity``.
    - ``embedding`` (encoders): mean-pooled sentence embeddings of each text (at most ``seq_len``
      tokens, default 128) against the baseline's: mean ``cosine`` and ``top1`` nearest-neighbour
      agreement (:func:`embedding_agreement`). Needs ``baseline``.
    - ``accuracy`` (sequence classifiers, with ``labels``: class indices or label names).
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid choices: {', '.join(TASKS)}")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ConfigError("texts must be a non-empty list of strings")
    if labels is not None and len(labels) != len(texts):
        raise ConfigError(f"{len(labels)} labels for {len(texts)} texts")
    task = task_of(model, labels) if task == "auto" else task
    tokenizer = tokenizer or _load_tokenizer(model)
    result: dict[str, Any] = {"task": task, "texts": len(texts)}
    if task == "perplexity":
        result["perplexity"] = perplexity(model, texts, tokenizer, seq_len)
        if baseline is not None:
            result["baseline_perplexity"] = perplexity(baseline, texts, tokenizer, seq_len)
            result["ratio"] = result["perplexity"] / result["baseline_perplexity"]
        return result
    batches, order = length_batches(texts, tokenizer, batch_size, seq_len or 128)
    if task == "accuracy":
        if labels is None:
            raise ConfigError("task 'accuracy' needs labels (a 'label' field per text)")
        ids = [_label_ids(model, labels)[i] for i in order]
        result["accuracy"] = _accuracy(model, batches, ids)
        if baseline is not None:
            result["baseline_accuracy"] = _accuracy(baseline, batches, ids)
        return result
    if baseline is None:
        raise ConfigError("embedding agreement needs the unpruned model: pass baseline=...")
    result.update(embedding_agreement(mean_pooled(baseline, batches), mean_pooled(model, batches)))
    return result


class _CallableModule(type(importlib)):  # type: ignore[misc]
    """Lets ``pk.evaluate(model, texts, baseline=...)`` call :func:`compare` while
    ``pk.evaluate.perplexity`` and the rest stay plain module attributes."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return compare(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
