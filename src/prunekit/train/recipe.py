"""The distillation recipe that works for a kind of model, as measured, and the text it trains on.

:func:`recipe_for` picks the defaults (``prunekit recover`` and ``prunekit prune --recover-steps``
start from them):

* **sentence encoders** (a base model with no head, such as all-MiniLM-L6-v2): ``1 - cos`` of the
  mean-pooled embedding plus 5 × every layer's hidden-state MSE, lr 5e-4, warm-up 10, dropout off,
  embeddings frozen, the teacher's targets cached, bfloat16 autocast, 32 sentences a step (padded,
  with an attention mask): the recipe of ``benchmarks/recovery.py``'s MiniLM rows;
* **causal LMs** (SmolLM2-135M): ``T² · KL`` on the logits at ``T = 1``, lr 1e-4, warm-up 5,
  input embeddings frozen (tied to the head), float32, windows of 4 × 128 tokens: its SmolLM2 rows;
* **other models with logits** (masked-LM heads, classifiers; not measured): KL at ``T = 2``, lr
  1e-4, windows of 4 × 128 tokens, dropout off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

KINDS = ("encoder", "causal-lm", "logits")
SPLITS = ("sentences", "windows")


@dataclass(frozen=True)
class Recipe:
    """Everything ``distill`` is given besides the models, the data and the step count."""

    kind: str
    target: str = "auto"
    #: ``"all"`` (every transformer block), ``"none"``, or comma-separated module names
    layers: str = "none"
    layer_weight: float = 1.0
    lr: float = 1e-4
    #: warm-up steps (None: ``distill``'s default, a tenth of the steps up to 100)
    warmup: int | None = None
    temperature: float = 2.0
    dropout: bool = False
    freeze_embeddings: bool = False
    cache_teacher: bool = False
    bf16: bool = False
    batch_size: int = 4
    seq_len: int = 128
    #: ``"sentences"`` (one padded row per sentence) or ``"windows"`` (fixed token windows)
    split: str = "windows"

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` (None values ignored: an option the user did not give)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


RECIPES = {
    "encoder": Recipe(
        kind="encoder", target="pooled", layers="all", layer_weight=5.0, lr=5e-4, warmup=10,
        dropout=False, freeze_embeddings=True, cache_teacher=True, bf16=True, batch_size=32,
        seq_len=128, split="sentences",
    ),
    "causal-lm": Recipe(
        kind="causal-lm", target="logits", lr=1e-4, warmup=5, temperature=1.0, dropout=False,
        freeze_embeddings=True, batch_size=4, seq_len=128, split="windows",
    ),
    "logits": Recipe(kind="logits"),
}  # fmt: skip


def model_kind(model: nn.Module) -> str:
    """``causal-lm`` (transformers' causal-LM classes), ``encoder`` (a Hugging Face base model:
    no head, its output a hidden state), else ``logits``."""
    from ..evaluate import is_causal_lm

    if is_causal_lm(model):
        return "causal-lm"
    base = getattr(model, "base_model", None)
    if base is model and hasattr(model, "config"):
        return "encoder"
    return "logits"


def recipe_for(model: nn.Module) -> Recipe:
    """The measured distillation defaults for ``model``'s kind (see the module docstring)."""
    return RECIPES[model_kind(model)]


def layer_names(model: nn.Module, spec: str) -> list[str]:
    """The modules whose outputs the per-layer MSE compares: ``all`` (every block of the longest
    list of same-typed blocks), ``none``, or comma-separated names of ``model``'s modules."""
    from ..structure.layers import find_layers

    spec = spec.strip()
    if spec == "none":
        return []
    if spec == "all":
        found = find_layers(model)
        if found is None:
            raise ConfigError(
                f"--layers all: {type(model).__name__} has no list of transformer blocks; name the "
                "modules (comma-separated) or pass --layers none"
            )
        name, blocks = found
        return [f"{name}.{i}" for i in range(len(blocks))]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown or not names:
        found = find_layers(model)
        example = f" such as {found[0]}.0" if found else ""
        raise ConfigError(
            f"--layers {spec!r}: {', '.join(unknown) or 'no name'} names no module of "
            f"{type(model).__name__}; valid: all, none, or comma-separated module names{example}"
        )
    return names


def freeze_embeddings(model: nn.Module) -> list[str]:
    """Stop training ``model``'s input embeddings (for a BERT-like encoder its whole
    ``embeddings`` block: word, position, type embeddings and their LayerNorm); they are not
    pruned and hold most of a small model's parameters. Returns the names of the frozen
    parameters."""
    frozen: list[nn.Module] = []
    base = getattr(model, "base_model", model)
    if isinstance(getattr(base, "embeddings", None), nn.Module):
        frozen.append(base.embeddings)
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            emb = get()
        except NotImplementedError:
            emb = None
        if isinstance(emb, nn.Module):
            frozen.append(emb)
    ids = {id(p) for m in frozen for p in m.parameters()}
    names = []
    for name, p in model.named_parameters():
        if id(p) in ids:
            p.requires_grad_(False)
            names.append(name)
    return names


def training_batches(
    path: str, tokenizer: Any, recipe: Recipe, nsamples: int, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """The batches of ``path`` (a ``.txt``/``.jsonl`` file or a built-in corpus) that the recipe
    trains on, in an order shuffled with ``seed``.

    ``windows``: :func:`~prunekit.textdata.load_calibration`'s fixed windows of ``seq_len``
    tokens. ``sentences``: the distinct sentences of the texts (a JSONL line, or a line of a
    ``.txt`` file; split after ``.``, ``!``, ``?``; at least 40 characters), at most ``nsamples``,
    batched
    by length with padding and an attention mask, truncated to ``seq_len`` tokens: what a sentence
    encoder embeds and is judged on.
    """
    from ..evaluate import length_batches, sentences
    from ..textdata import corpus_texts, load_calibration

    if recipe.split not in SPLITS:
        raise ConfigError(f"unknown split {recipe.split!r}; valid: {', '.join(SPLITS)}")
    if recipe.split == "windows":
        batches = load_calibration(path, tokenizer, nsamples, recipe.seq_len, recipe.batch_size)
    else:
        texts = corpus_texts(path)
        if str(path).lower().endswith(".txt"):  # one text per line, as `prunekit eval` reads it
            texts = [line for t in texts for line in t.splitlines()]
        texts = [" ".join(t.split()) for t in texts if t.strip()]
        found = sentences(texts)[:nsamples]
        if not found:
            raise ConfigError(
                f"{path} holds no sentence of 40 characters or more to train a sentence encoder "
                "on; pass --split windows"
            )
        batches = length_batches(found, tokenizer, recipe.batch_size, recipe.seq_len)[0]
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed))
    return [batches[i] for i in order]


def distill_options(recipe: Recipe, model: nn.Module) -> dict[str, Any]:
    """``distill``'s (and ``prune_and_recover``'s) keyword arguments for ``recipe`` on ``model``
    (the per-layer names resolved; a bad name raises ConfigError before any training)."""
    layers = layer_names(model, recipe.layers)
    return {
        "target": recipe.target,
        "hidden_layers": layers or None,
        "hidden_weight": recipe.layer_weight,
        "lr": recipe.lr,
        "warmup": recipe.warmup,
        "temperature": recipe.temperature,
        "dropout": recipe.dropout,
        "cache_teacher": recipe.cache_teacher,
        "autocast": torch.bfloat16 if recipe.bf16 else None,
    }
