"""``prunekit prune``: prune a model once and write a finalized checkpoint."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from ..analysis.report import report
from ..api import finalize
from ..config import dump_recipe
from ..errors import PrunekitError
from ..modelio import SPEC_HELP, TRUST_SOURCE_HELP, load_model
from ..pruner import Pruner
from ..structure.shrink import shrink
from ..textdata import load_calibration
from ._config_options import add_config_options, config_from_args
from .base import COMMANDS, Command


def calibration_batches(args: argparse.Namespace) -> list[dict]:
    """Token batches from ``--calibration``, with the model directory's tokenizer (offline)."""
    if args.calibration is None:
        raise PrunekitError("the criterion is data-aware: pass --calibration FILE.txt|.jsonl")
    if not (Path(args.model) / "config.json").is_file():
        raise PrunekitError("--calibration needs a Hugging Face model directory (its tokenizer)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise PrunekitError(
            "--calibration needs transformers: pip install 'prunekit[hf]'"
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    seqlen = min(args.seqlen, getattr(tokenizer, "model_max_length", args.seqlen) or args.seqlen)
    return load_calibration(args.calibration, tokenizer, args.nsamples, seqlen)


def example_inputs(model: nn.Module, shape: str | None, seed: int) -> Any:
    """Inputs to trace for channel/head pruning: a random tensor of ``--example-shape``, else a
    Hugging Face model's own ``dummy_inputs``."""
    if shape is not None:
        try:
            dims = [int(d) for d in shape.split(",")]
        except ValueError:
            dims = []
        if not dims or min(dims) < 1:
            raise PrunekitError(
                f"--example-shape must be positive integers like 1,3,32,32, not {shape!r}"
            )
        return torch.randn(dims, generator=torch.Generator().manual_seed(seed))
    dummy = getattr(model, "dummy_inputs", None)
    if isinstance(dummy, dict) and dummy:
        return dict(dummy)
    raise PrunekitError(
        "channel and head pruning trace the model: pass --example-shape N,C,H,W (the shape of one "
        "input batch)"
    )


@COMMANDS.register("prune", examples=(["--help"],))  # argv
class PruneCommand(Command):
    """Prune a model once and write OUT/model.safetensors (dense, finalized) + OUT/prunekit.json."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", metavar="MODEL", help=SPEC_HELP)
        parser.add_argument(
            "--weights",
            default=None,
            metavar="FILE.safetensors",
            help="weights for a package.module:factory model",
        )
        add_config_options(parser)
        parser.add_argument(
            "--calibration",
            default=None,
            metavar="FILE.txt|.jsonl",
            help="text for data-aware criteria (wanda, sparsegpt, ...), tokenized with the "
            "Hugging Face model directory's tokenizer",
        )
        parser.add_argument(
            "--nsamples", type=int, default=128, help="calibration windows (default: 128)"
        )
        parser.add_argument(
            "--seqlen", type=int, default=512, help="tokens per calibration window (default: 512)"
        )
        parser.add_argument(
            "--example-shape",
            default=None,
            metavar="N,C,H,W",
            help="input shape to trace for channel/head pruning (Hugging Face models default to "
            "their own dummy inputs); the pruned model is shrunk physically",
        )
        parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
        parser.add_argument("--trust-source", action="store_true", help=TRUST_SOURCE_HELP)

    def run(self, args: argparse.Namespace) -> int:
        config = config_from_args(args)  # a bad config fails before a large model loads
        if args.print_config:
            print(dump_recipe(config), end="")
            return 0
        data = None
        if args.calibration is not None or config.resolve().criterion.requires_data:
            data = calibration_batches(args)
        model = load_model(args.model, args.weights, trust_source=args.trust_source)
        example = None
        if config.resolve().granularity.structured:
            example = example_inputs(model, args.example_shape, config.seed)
        pruner = Pruner(model, config, data=data, example_inputs=example, progress=True)
        pruner.step()
        model = finalize(model) if example is None else shrink(model, example)
        from .. import save

        is_directory = Path(args.model).is_dir()
        source = {} if is_directory else {"source": args.model}  # lets `report OUT/` rebuild it
        save(model, args.output, dense=True, config=config, extra=source)
        Console().print(report(model))
        print(f"wrote {args.output}")
        return 0
