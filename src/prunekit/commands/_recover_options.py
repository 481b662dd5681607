"""The distillation options that ``prunekit recover`` and ``prunekit prune --recover-steps`` share.

One helper adds them to both commands (``prune`` spells them ``--recover-lr``, ``--recover-target``,
...; ``recover`` plainly, ``--lr``, ``--target``, ...) under the same ``dest`` names, and one
function turns them into :mod:`prunekit.train.recipe`'s recipe for the model: an option the user
does not give keeps the measured default for the model's kind.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import yes_no
from ..errors import ConfigError

TARGETS = ("auto", "logits", "hidden", "pooled")
SPLITS = ("auto", "sentences", "windows")


def _yes_no_value(text: str) -> bool:
    try:
        return yes_no(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"{e} (yes/true/1/on or no/false/0/off)") from None


def _flag(group: Any, name: str, dest: str, help: str) -> None:
    """``--NAME`` (yes), ``--NAME yes|no``, ``--no-NAME`` (no); unset: None (the recipe's)."""
    group.add_argument(
        f"--{name}", dest=dest, type=_yes_no_value, nargs="?", const=True, default=None,
        metavar="yes|no", help=help,
    )  # fmt: skip
    group.add_argument(
        f"--no-{name}", dest=dest, action="store_const", const=False, help=argparse.SUPPRESS
    )


def add_distill_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The recipe options, spelled ``--{prefix}lr`` etc.; their values land in ``distill_*``."""
    group = parser.add_argument_group("distillation (defaults: the measured recipe for the model)")
    p = prefix
    group.add_argument(
        f"--{p}target", dest="distill_target", choices=TARGETS, default=None,
        help="what the student matches: logits (KL), hidden (MSE on the last hidden state), "
        "pooled (cosine of the mean-pooled sentence embedding); auto = logits where the model "
        "has them, else hidden (default: pooled for sentence encoders, logits for causal LMs)",
    )  # fmt: skip
    group.add_argument(
        f"--{p}layers", dest="distill_layers", default=None, metavar="all|none|NAME,...",
        help="intermediate layers whose outputs add an MSE term: all (every transformer block), "
        "none, or comma-separated module names (default: all for sentence encoders, else none)",
    )  # fmt: skip
    group.add_argument(
        f"--{p}layer-weight", dest="distill_layer_weight", type=float, default=None, metavar="W",
        help="weight of the per-layer MSE (default: 5 for sentence encoders)",
    )  # fmt: skip
    group.add_argument(
        f"--{p}lr", dest="distill_lr", type=float, default=None, metavar="LR",
        help="AdamW peak learning rate (default: 5e-4 sentence encoders, 1e-4 otherwise)",
    )  # fmt: skip
    group.add_argument(
        f"--{p}warmup", dest="distill_warmup", type=int, default=None, metavar="STEPS",
        help="linear warm-up steps before the cosine decay (default: 10 sentence encoders, 5 "
        "causal LMs)",
    )  # fmt: skip
    group.add_argument(
        f"--{p}temperature", dest="distill_temperature", type=float, default=None, metavar="T",
        help="KD temperature of logits (default: 1 causal LMs, 2 otherwise)",
    )  # fmt: skip
    group.add_argument(
        f"--{p}batch-size", dest="distill_batch_size", type=int, default=None, metavar="N",
        help="sentences or windows per step (default: 32 sentences, 4 windows)",
    )  # fmt: skip
    group.add_argument(
        f"--{p}split", dest="distill_split", choices=SPLITS, default=None,
        help="how --data becomes batches: sentences (one padded row per sentence, with an "
        "attention mask; what a sentence encoder embeds) or windows (fixed token windows); "
        "auto = sentences for sentence encoders, else windows",
    )  # fmt: skip
    group.add_argument(
        f"--{p}cpu-minutes", dest="distill_cpu_minutes", type=float, default=None, metavar="M",
        help="stop after this much process CPU time of training (the learning rate then decays "
        "over the budget); with it the step count may be left out",
    )  # fmt: skip
    _flag(group, f"{p}dropout", "distill_dropout",
          "train with the model's dropout (--no-dropout: off, the default, so the student "
          "matches the deterministic teacher)")  # fmt: skip
    _flag(group, f"{p}freeze-embeddings", "distill_freeze_embeddings",
          "keep the input embeddings (not pruned) fixed (default: yes for sentence encoders "
          "and causal LMs)")  # fmt: skip
    _flag(group, f"{p}cache-teacher", "distill_cache_teacher",
          "run the teacher once per batch and keep its targets in memory (default: yes for "
          "sentence encoders; a causal LM's logits are too large)")  # fmt: skip
    _flag(group, f"{p}bf16", "distill_bf16",
          "train under bfloat16 autocast (float32 weights and optimizer; default: yes for "
          "sentence encoders)")  # fmt: skip


def check_distill_options(args: argparse.Namespace, prefix: str = "") -> None:
    """Every out-of-range number, before any model loads (names of layers are checked against
    the model once it is loaded)."""
    from ..errors import PrunekitError

    checks = [
        ("lr", args.distill_lr, lambda v: v > 0, "> 0"),
        ("layer-weight", args.distill_layer_weight, lambda v: v >= 0, ">= 0"),
        ("warmup", args.distill_warmup, lambda v: v >= 0, ">= 0"),
        ("temperature", args.distill_temperature, lambda v: v > 0, "> 0"),
        ("batch-size", args.distill_batch_size, lambda v: v >= 1, ">= 1"),
        ("cpu-minutes", args.distill_cpu_minutes, lambda v: v > 0, "> 0"),
    ]
    for name, value, ok, want in checks:
        if value is not None and not ok(value):
            raise PrunekitError(f"--{prefix}{name} must be {want}, got {value}")
    if args.distill_layers is not None and not args.distill_layers.strip():
        raise PrunekitError(f"--{prefix}layers is empty; valid: all, none, or module names")


def distill_recipe(args: argparse.Namespace, model: Any, seq_len: int | None = None) -> Any:
    """The recipe for ``model`` (its kind's measured defaults) with the options given applied."""
    from ..train.recipe import recipe_for

    split = args.distill_split if args.distill_split != "auto" else None
    return recipe_for(model).replace(
        target=args.distill_target,
        layers=args.distill_layers,
        layer_weight=args.distill_layer_weight,
        lr=args.distill_lr,
        warmup=args.distill_warmup,
        temperature=args.distill_temperature,
        batch_size=args.distill_batch_size,
        split=split,
        dropout=args.distill_dropout,
        freeze_embeddings=args.distill_freeze_embeddings,
        cache_teacher=args.distill_cache_teacher,
        bf16=args.distill_bf16,
        seq_len=seq_len,
    )


def describe(recipe: Any, frozen: int) -> str:
    """One line saying what the run does, printed before training."""
    layers = recipe.layers
    layers = "" if layers == "none" else f" + {recipe.layer_weight:g} x MSE({layers} layers)"
    return (
        f"distilling ({recipe.kind} recipe): target {recipe.target}{layers}, {recipe.batch_size} "
        f"{recipe.split} a step (<= {recipe.seq_len} tokens), lr {recipe.lr:g}, warm-up "
        f"{recipe.warmup if recipe.warmup is not None else 'auto'}, dropout "
        f"{'on' if recipe.dropout else 'off'}, {frozen} embedding tensor(s) frozen, teacher "
        f"{'cached' if recipe.cache_teacher else 'run every step'}, "
        f"{'bfloat16 autocast' if recipe.bf16 else 'float32'}"
    )


def apply_recipe(recipe: Any, student: Any) -> tuple[dict[str, Any], list[str]]:
    """``distill``'s keyword arguments for ``recipe`` (layer names checked against ``student``,
    raising before anything changes), then the embeddings frozen where the recipe says so.
    Returns the arguments and the frozen parameters' names."""
    from ..train.recipe import distill_options, freeze_embeddings

    options = distill_options(recipe, student)
    frozen = freeze_embeddings(student) if recipe.freeze_embeddings else []
    return options, frozen


def budget(args: argparse.Namespace) -> float | None:
    """``--cpu-minutes`` as CPU seconds (``distill``'s ``cpu_budget``)."""
    minutes = args.distill_cpu_minutes
    return None if minutes is None else minutes * 60.0
