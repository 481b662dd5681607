"""``prunekit prune``: prune a model once and write a complete, smaller output folder."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ._config_options import add_config_options, config_from_args
from ._model_options import add_model_options
from ._recover_options import (
    add_distill_options,
    apply_recipe,
    budget,
    check_distill_options,
    describe,
    distill_recipe,
)
from .base import COMMANDS, Command, plugin_names

FORMAT_CHOICES = ("auto", *plugin_names("formats"))


# ---- the config options' help --------------------------------------------------------------------

#: the package whose plugin files register each plugin option's names
PLUGIN_PACKAGES = {
    "granularity": "granularity",
    "criterion": "criteria",
    "scope": "allocation",
    "schedule": "schedule",
}


def list_registered_names(parser: argparse.ArgumentParser) -> None:
    """Append every registered name to each plugin option's help (read from the plugin files, so
    ``--help`` still imports no torch)."""
    for action in parser._actions:
        package = PLUGIN_PACKAGES.get(action.dest)
        if package is not None and action.help:
            action.help += f"; registered: {', '.join(plugin_names(package))}"


# ---- data, loss and example inputs --------------------------------------------------------------


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """Calibration text, the loss of gradient criteria, and the example inputs."""
    parser.add_argument(
        "--calibration",
        default=None,
        metavar="FILE.txt|.jsonl",
        help="text for data-aware criteria (wanda, sparsegpt, obd, taylor, ...), tokenized with "
        "the Hugging Face model folder's tokenizer; or builtin:docstrings (stdlib docstrings, "
        "offline)",
    )
    parser.add_argument(
        "--nsamples", type=int, default=128, help="calibration windows (default: 128)"
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=512,
        help="tokens per calibration window and per example input (default: 512, at most the "
        "model's context)",
    )
    parser.add_argument(
        "--loss",
        choices=("lm", "mlm"),
        default=None,
        help="the loss of gradient criteria (obd, taylor): lm = next-token prediction (the "
        "default for causal LMs), mlm = masked-token prediction (models with a masked-LM head)",
    )
    parser.add_argument(
        "--example-shape",
        default=None,
        metavar="N,C,H,W",
        help="shape of one input batch, traced by channel/head pruning and recorded for bench, "
        "eval and export (Hugging Face language models: batch,tokens; default: 1 x --seq-len "
        "tokens, or the first Linear's width)",
    )


def calibration_batches(args: argparse.Namespace, model: Any, config: Any) -> list[dict]:
    """Token batches from ``--calibration``, with the model folder's tokenizer (offline), with
    the labels of ``--loss`` (causal LMs: ``lm`` by default) for the gradient criteria."""
    from ..criteria.obd import OBD
    from ..criteria.taylor import Taylor
    from ..errors import PrunekitError
    from ..evaluate import is_causal_lm
    from ..textdata import add_labels, load_calibration

    criterion = config.resolve().criterion
    name = type(criterion).__name__
    gradient = isinstance(criterion, (OBD, Taylor))  # they take gradients of a loss

    if args.calibration is None:
        raise PrunekitError(
            f"criterion {name} is data-aware: pass --calibration FILE.txt|.jsonl "
            "(or builtin:docstrings)"
        )
    if not (Path(args.model) / "config.json").is_file():
        raise PrunekitError("--calibration needs a Hugging Face model folder (its tokenizer)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise PrunekitError(
            "--calibration needs transformers: pip install 'prunekit[hf]'"
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    longest = getattr(tokenizer, "model_max_length", args.seq_len) or args.seq_len
    batches = load_calibration(
        args.calibration, tokenizer, args.nsamples, min(args.seq_len, longest)
    )
    loss = args.loss
    if loss is None and gradient and is_causal_lm(model):
        loss = "lm"
    if loss is None and gradient:
        raise PrunekitError(
            f"criterion {name} takes gradients of a loss: pass --loss lm (causal "
            f"LMs) or --loss mlm (masked-LM heads); {type(model).__name__} has neither by default"
        )
    return batches if loss is None else add_labels(batches, loss, tokenizer, config.seed)


# ---- recovery (prune gradually, training between the steps) ------------------------------------

RECOVER_METHODS = ("distill", "finetune")


def add_recover_options(parser: argparse.ArgumentParser) -> None:
    """``--recover-steps N --data FILE``: prune gradually and recover (prunekit.train)."""
    parser.add_argument(
        "--recover-steps",
        type=int,
        default=None,
        metavar="N",
        help="prune gradually in --prune-steps steps, training N optimizer steps between them "
        "and after the last one on --data (prunekit.train.prune_and_recover)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="FILE.txt|.jsonl",
        help="training text for --recover-steps (or builtin:docstrings), tokenized with the "
        "model folder's tokenizer: sentences (at most --seq-len tokens) for a sentence "
        "encoder, else windows of --seq-len tokens (--recover-split)",
    )
    parser.add_argument(
        "--recover-method",
        choices=RECOVER_METHODS,
        default="distill",
        help="distill = from the dense model (the recipe options below; with --loss, mixed "
        "half and half with that loss); finetune = the language-modelling loss only (default: "
        "distill)",
    )
    parser.add_argument(
        "--prune-steps", type=int, default=4, help="pruning steps of --recover-steps (default: 4)"
    )
    add_distill_options(parser, prefix="recover-")


def check_recover_options(args: argparse.Namespace) -> None:
    """Every --recover-* mistake, before the model loads."""
    from ..errors import PrunekitError

    if args.recover_steps is None:
        if args.data is not None:
            raise PrunekitError("--data is training text for --recover-steps N: pass both")
        return
    if args.recover_steps < 1 or args.prune_steps < 1:
        raise PrunekitError("--recover-steps and --prune-steps must be >= 1")
    check_distill_options(args, prefix="recover-")
    if args.data is None:
        raise PrunekitError("--recover-steps needs --data FILE.txt|.jsonl (or builtin:docstrings)")
    if not args.data.startswith("builtin:") and not Path(args.data).is_file():
        raise PrunekitError(f"--data {args.data}: no such file")
    if not (Path(args.model) / "config.json").is_file():
        raise PrunekitError("--recover-steps needs a Hugging Face model folder (its tokenizer)")


def recover(args: argparse.Namespace, model: Any, config: Any, calibration: Any, example: Any):
    """Prune ``model`` gradually while training on ``--data``; masks stay attached (the caller
    shrinks or bakes). Returns (model, a record of the recovery for prunekit.json)."""
    from transformers import AutoTokenizer

    from ..errors import PrunekitError
    from ..evaluate import is_causal_lm
    from ..textdata import add_labels
    from ..train import prune_and_recover
    from ..train.recipe import training_batches

    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    longest = getattr(tokenizer, "model_max_length", args.seq_len) or args.seq_len
    recipe = distill_recipe(args, model, min(args.seq_len, longest))
    batches = training_batches(args.data, tokenizer, recipe, 10**9, config.seed)
    if args.recover_method == "finetune":
        loss = args.loss or ("lm" if is_causal_lm(model) else None)
        if loss is None:
            raise PrunekitError(
                f"--recover-method finetune needs a loss: {type(model).__name__} is no causal "
                "LM; pass --loss mlm (masked-LM heads) or use --recover-method distill"
            )
        batches = add_labels(batches, loss, tokenizer, config.seed)
    elif args.loss is not None:  # distillation mixed half and half with the task loss
        batches = add_labels(batches, args.loss, tokenizer, config.seed)
    options, frozen = apply_recipe(recipe, model)  # finetune uses lr, warm-up, dropout, bf16
    print(describe(recipe, len(frozen)) + f"; {len(batches)} batches of {args.data}")
    result = prune_and_recover(
        model,
        config,
        batches,
        recover_steps=args.recover_steps,
        prune_steps=args.prune_steps,
        method=args.recover_method,
        example_inputs=example,
        calibration=calibration,
        finalize=False,
        seed=config.seed,
        progress=True,
        cpu_budget=budget(args),
        **options,
    )
    history = result.history
    record = {
        "method": args.recover_method,
        "data": str(args.data),
        "recipe": dataclasses.asdict(recipe),
        "steps": history.steps,
        "prunes": [[step, sparsity] for step, sparsity in result.prunes],
        "loss_first": history.losses[0],
        "loss_last": history.losses[-1],
        "cpu_seconds": round(history.cpu_seconds, 1),
    }
    print(
        f"pruned in {len(result.prunes)} step(s) while training {history.steps} steps "
        f"({args.recover_method}): loss {history.losses[0]:.4g} -> {history.losses[-1]:.4g}"
    )
    return result.model, record


# ---- the output folder --------------------------------------------------------------------------


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output folder (created if needed)"
    )
    parser.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        default="auto",
        help="weight storage: auto = the smallest format per tensor (default); dense = plain "
        "tensors that transformers' from_pretrained loads",
    )


def baseline_record(args: argparse.Namespace) -> dict[str, Any]:
    """How to load the unpruned model again (for ``bench`` and ``eval``)."""
    if Path(args.model).is_dir():
        return {"model": str(Path(args.model).resolve())}
    weights = str(Path(args.weights).resolve()) if args.weights else None
    return {"model": args.model, "weights": weights}


def input_bytes(args: argparse.Namespace, model: Any) -> int:
    """Bytes of what the input model is made of: its weight files, config and the carried files
    (a folder), its --weights file, else a plain safetensors file of its state dict."""
    from ..analysis.bench import dense_safetensors_bytes, model_folder_bytes

    if Path(args.model).is_dir():
        return model_folder_bytes(args.model)
    if args.weights:
        return Path(args.weights).stat().st_size
    return dense_safetensors_bytes(model)


def write_output(
    model: Any,
    args: argparse.Namespace,
    config: Any,
    example: Any,
    baseline_bytes: int,
    recovery: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the output folder: checkpoint, carried-over files, model card. Returns its facts."""
    from .. import save
    from ..analysis.bench import directory_bytes
    from ..analysis.report import report
    from ..example_inputs import describe
    from ..formats.config_fit import described
    from ..formats.header import read_header
    from ..outfolder import CARD_FILE, carry_over, model_card, write_atomically
    from ..runtime.report import as_text

    out = Path(args.output)
    extra = {
        "baseline": baseline_record(args),
        "input": {"bytes": baseline_bytes},
        **({"example_inputs": describe(example)} if example is not None else {}),
        **({"recovery": recovery} if recovery is not None else {}),
    }
    if not Path(args.model).is_dir():
        extra["source"] = args.model  # lets `report OUT/` rebuild it
    save(model, out, format=args.format, config=config, extra=extra)
    carried = carry_over(Path(args.model), out) if Path(args.model).is_dir() else []
    command = "prunekit " + " ".join(shlex.quote(a) for a in getattr(args, "_argv", sys.argv[1:]))
    header = read_header(out)
    loadable = described(model)  # None: not a Hugging Face model
    dense = all(e["format"] == "dense" for e in header["tensors"].values())
    card = model_card(
        source=args.model,
        command=command,
        header=header,
        report_text=as_text(report(model)),
        carried=carried,
        input_bytes=baseline_bytes,
        output_bytes=directory_bytes(out),  # without the card itself
        described=loadable,
    )
    write_atomically(out / CARD_FILE, card.encode())
    return {
        "bytes": directory_bytes(out),
        "input_bytes": baseline_bytes,
        "carried": carried,
        "transformers_loads": loadable and dense,
    }


# ---- the command --------------------------------------------------------------------------------


@COMMANDS.register("prune", examples=(["--help"],))  # argv
class PruneCommand(Command):
    """Prune a model once and write a complete, smaller output folder.

    OUT holds the weights in the smallest format (--format), every non-weight file of the input
    folder (tokenizer, processor, generation and sentence-transformers configs), prunekit.json
    (config, report, the model it was pruned from, its example inputs) and a model card
    (README.md). Channel and head pruning shrink the model physically (and patch its config).
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_options(parser, factory=False)
        add_config_options(parser)
        list_registered_names(parser)
        add_data_options(parser)
        add_recover_options(parser)
        add_output_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console

        from ..analysis.report import report
        from ..api import finalize
        from ..errors import PrunekitError
        from ..example_inputs import for_model, parse_shape
        from ..modelio import load_model
        from ..outfolder import check_output_dir
        from ..pruner import Pruner
        from ..structure.shrink import shrink

        check_output_dir(args.output, args.model)  # every user error before the slow work
        shape = parse_shape(args.example_shape) if args.example_shape is not None else None
        if args.nsamples < 1 or args.seq_len < 2:
            raise PrunekitError("--nsamples must be >= 1 and --seq-len >= 2")
        check_recover_options(args)
        config = config_from_args(args)  # a bad config fails before a large model loads
        if args.print_config:
            from ..config import dump_recipe

            print(dump_recipe(config), end="")
            return 0
        resolved = config.resolve()
        model = load_model(args.model, args.weights, trust_source=args.trust_source)
        data = None
        recovering = args.recover_steps is not None
        needs_data = resolved.criterion.requires_data and not recovering  # else: --data's batches
        if args.calibration is not None or needs_data:
            data = calibration_batches(args, model, config)
        baseline_bytes = input_bytes(args, model)
        structured = resolved.granularity.structured
        try:
            example = for_model(model, shape, 1, args.seq_len, config.seed)
        except PrunekitError:
            if structured:  # tracing needs them; bench and export can take --example-shape later
                raise
            example = None
        traced = example if structured else None
        recovery = None
        if recovering:
            model, recovery = recover(args, model, config, data, traced)
        else:
            Pruner(model, config, data=data, example_inputs=traced, progress=True).step()
        model = shrink(model, example) if structured else finalize(model)
        facts = write_output(model, args, config, example, baseline_bytes, recovery)
        Console(width=max(Console().width, 120)).print(report(model))
        ratio = facts["bytes"] / facts["input_bytes"]
        print(
            f"wrote {args.output}: {facts['bytes']:,} bytes, {ratio:.1%} of the input's "
            f"{facts['input_bytes']:,} ({1 / ratio:.2f}x smaller); carried over "
            f"{len(facts['carried'])} file(s)"
        )
        if facts["transformers_loads"]:
            print(f"plain transformers loads it too: AutoModel.from_pretrained({args.output!r})")
        return 0
