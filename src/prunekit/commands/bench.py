"""``prunekit bench``: a saved model against its dense twin: size on disk, memory, latency."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from rich.console import Console

from ..analysis.bench import bench, example_input
from ..errors import PrunekitError
from ..formats.checkpoint import load
from ..modelio import SPEC_HELP, TRUST_SOURCE_HELP, load_factory, load_model
from ..runtime import DecisionCache
from .base import COMMANDS, Command


def _shape(text: str) -> list[int]:
    try:
        dims = [int(d) for d in text.replace("x", ",").split(",") if d]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shape like 1,3,224,224: {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"not a shape like 1,3,224,224: {text!r}")
    return dims


@COMMANDS.register("bench", examples=(["--help"],))  # argv
class BenchCommand(Command):
    """Measure a saved model against its dense twin: size on disk, weight memory and latency.

    The model is swapped to sparse kernels where they are measured faster (prunekit.sparsify),
    and dense and sparse forward passes are timed interleaved in one run.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", metavar="DIR", help=SPEC_HELP)
        parser.add_argument(
            "--weights",
            default=None,
            metavar="FILE.safetensors",
            help="weights for a package.module:factory model",
        )
        parser.add_argument(
            "--factory",
            default=None,
            metavar="package.module:factory",
            help="builds the model a checkpoint DIR was saved from (if it did not record one)",
        )
        parser.add_argument("--batch-size", type=int, default=1, help="input batch (default 1)")
        parser.add_argument(
            "--seq-len",
            type=int,
            default=16,
            help="tokens per sequence for language models (default 16)",
        )
        parser.add_argument(
            "--input-shape",
            type=_shape,
            default=None,
            metavar="1,3,224,224",
            help="the input tensor's shape (default: guessed from the model)",
        )
        parser.add_argument(
            "--threads", type=int, default=None, help="torch threads (default: torch's own)"
        )
        parser.add_argument(
            "--cache-file",
            default=None,
            metavar="FILE.json",
            help="remember sparsify's timing decisions in this file",
        )
        parser.add_argument("--layers", action="store_true", help="also print the per-layer table")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        parser.add_argument("--trust-source", action="store_true", help=TRUST_SOURCE_HELP)

    def run(self, args: argparse.Namespace) -> int:
        if args.batch_size < 1 or args.seq_len < 1:
            raise PrunekitError("--batch-size and --seq-len must be positive")
        if args.threads is not None:
            if args.threads < 1:
                raise PrunekitError("--threads must be positive")
            torch.set_num_threads(args.threads)
        if args.factory is not None:
            if not (Path(args.model) / "prunekit.json").is_file():
                raise PrunekitError("--factory applies to a prunekit checkpoint directory")
            model = load(args.model, model=load_factory(args.factory))
        else:
            model = load_model(args.model, args.weights, trust_source=args.trust_source)
        path = args.weights if args.weights is not None else args.model
        x = example_input(model, args.batch_size, args.seq_len, args.input_shape)
        cache = DecisionCache(args.cache_file) if args.cache_file else None
        _, result = bench(model, path if os.path.exists(path) else None, x, cache=cache)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
            return 0
        console = Console(width=max(Console().width, 120))  # keep the tables readable in logs
        if args.layers:
            console.print(result.sparsify)
        console.print(result)
        return 0
