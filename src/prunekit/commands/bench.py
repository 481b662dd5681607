"""``prunekit bench``: a pruned model against the model it was pruned from."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._model_options import add_model_options
from .base import COMMANDS, Command


def add_input_options(parser: argparse.ArgumentParser, default_batch: int | None = None) -> None:
    """The example-input options that bench, eval and export share with prune."""
    parser.add_argument(
        "--example-shape",
        default=None,
        metavar="N,C,H,W",
        help="shape of one input batch (language models: batch,tokens; default: the inputs "
        "recorded by prunekit prune, else guessed from the model)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=default_batch,
        help="replace the batch size of the recorded inputs"
        + (f" (default {default_batch})" if default_batch else ""),
    )
    parser.add_argument(
        "--seq-len", type=int, default=None, help="replace the tokens per sequence of the inputs"
    )


def load_pruned(args: argparse.Namespace) -> Any:
    """The model ``args.model`` names, with ``--weights`` or ``--factory``."""
    from ..errors import PrunekitError
    from ..formats.checkpoint import load
    from ..modelio import load_factory, load_model

    if args.factory is not None:
        if not (Path(args.model) / "prunekit.json").is_file():
            raise PrunekitError("--factory applies to a prunekit output folder")
        return load(args.model, model=load_factory(args.factory))
    return load_model(args.model, args.weights, trust_source=args.trust_source)


def recorded(path: str) -> dict[str, Any]:
    """What ``prunekit prune`` recorded in ``path/prunekit.json`` (empty for other models)."""
    from ..formats.header import read_header

    if not (Path(path) / "prunekit.json").is_file():
        return {}
    return read_header(Path(path))


def load_baseline(args: argparse.Namespace, header: dict[str, Any]) -> tuple[Any, str | None]:
    """The unpruned model: ``--baseline``, else the one ``prunekit prune`` recorded (if it is
    still there), else None. Returns (model, its path or spec)."""
    from ..errors import PrunekitError
    from ..modelio import TRUSTED_SOURCES, load_model

    if args.baseline is not None:
        return load_model(args.baseline), args.baseline
    rec = header.get("baseline")
    if not isinstance(rec, dict) or not isinstance(rec.get("model"), str):
        return None, None
    spec, weights = rec["model"], rec.get("weights")
    named_code = ":" in spec and not Path(spec).is_dir()  # as a checkpoint's source
    if named_code and spec not in TRUSTED_SOURCES and not args.trust_source:
        raise PrunekitError(
            f"prunekit.json names the code {spec!r} to build the baseline; prunekit does not "
            "run code named by a file: pass --baseline MODEL, or --trust-source"
        )
    if Path(spec).is_dir() or (":" in spec and (weights is None or Path(weights).is_file())):
        try:
            return load_model(spec, weights, trust_source=args.trust_source), (
                spec if weights is None else weights
            )
        except PrunekitError as e:
            raise PrunekitError(
                f"cannot load the recorded baseline {spec}: {e}; pass --baseline MODEL"
            ) from None
    return None, None


def check_input_options(args: argparse.Namespace) -> None:
    """Fail on a bad --example-shape, --batch-size or --seq-len before loading anything."""
    from ..errors import PrunekitError
    from ..example_inputs import parse_shape

    for flag in ("batch_size", "seq_len"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise PrunekitError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.example_shape is not None:
        parse_shape(args.example_shape)


def inputs_for(args: argparse.Namespace, model: Any, header: dict[str, Any]) -> Any:
    """``--example-shape``, else the recorded example inputs (with --batch-size/--seq-len), else
    guessed from the model."""
    from ..example_inputs import for_model, parse_shape, rebuild

    check_input_options(args)
    if args.example_shape is not None:
        return for_model(model, parse_shape(args.example_shape))
    spec = header.get("example_inputs")
    if isinstance(spec, dict):
        return rebuild(spec, 0, args.batch_size, args.seq_len)
    return for_model(model, None, args.batch_size or 1, args.seq_len or 128)


@COMMANDS.register("bench", examples=(["--help"],))  # argv
class BenchCommand(Command):
    """Measure a pruned model against the model it was pruned from: size, memory, latency.

    The baseline is the model that prunekit prune recorded (or --baseline MODEL), so structured
    pruning shows its real speedup; without one, the pruned model's dense twin. The pruned model
    moves to sparse kernels where they are measured faster (prunekit.sparsify); --optimize folds
    BatchNorm into the layer before it in both models first. Both run on the example inputs
    recorded at prune time, interleaved, on 1 thread by default; min/median/max and the
    machine's load are printed, with a warning when the load makes them unreliable.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_options(
            parser, baseline="the unpruned model to compare with (default: the one prune recorded)"
        )
        add_input_options(parser)
        parser.add_argument(
            "--threads", type=int, default=1, help="torch threads while timing (default 1)"
        )
        parser.add_argument(
            "--rounds", type=int, default=30, help="interleaved timing rounds (default 30)"
        )
        parser.add_argument(
            "--no-sparse-kernels",
            action="store_true",
            help="time the pruned model with dense kernels only (no prunekit.sparsify)",
        )
        parser.add_argument(
            "--cache-file",
            default=None,
            metavar="FILE.json",
            help="remember sparsify's timing decisions in this file",
        )
        parser.add_argument(
            "--optimize",
            action="store_true",
            help="time both models as deployed: BatchNorm folded into the conv or linear before "
            "it (prunekit.optimize_for_inference, checked against each unoptimised model)",
        )
        parser.add_argument(
            "--channels-last",
            action="store_true",
            help="with --optimize, conv weights in channels-last memory format too (implies it)",
        )
        parser.add_argument("--layers", action="store_true", help="also print the per-layer table")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def run(self, args: argparse.Namespace) -> int:
        import os
        import sys

        from rich.console import Console

        from ..analysis.bench import bench
        from ..errors import PrunekitError
        from ..runtime import DecisionCache
        from ..threads import torch_threads

        if args.threads < 1 or args.rounds < 3:
            raise PrunekitError("--threads must be positive and --rounds at least 3")
        check_input_options(args)
        header = recorded(args.model)
        model = load_pruned(args)
        baseline, baseline_spec = load_baseline(args, header)
        inputs = inputs_for(args, model, header)
        path = args.weights if args.weights is not None else args.model
        cache = DecisionCache(args.cache_file) if args.cache_file else None
        recorded_bytes = None
        if baseline is not None and args.baseline is None:
            recorded_bytes = (header.get("input") or {}).get("bytes")
        with torch_threads(args.threads):
            _, result = bench(
                model,
                path if os.path.exists(path) else None,
                inputs,
                baseline=baseline,
                baseline_path=baseline_spec
                if baseline_spec and os.path.exists(baseline_spec)
                else None,
                baseline_bytes=recorded_bytes,
                rounds=args.rounds,
                use_sparse_kernels=not args.no_sparse_kernels,
                cache=cache,
                optimize=args.optimize,
                channels_last=args.channels_last,
            )
        for warning in result.warnings:
            print(f"prunekit bench: warning: {warning}", file=sys.stderr)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
            return 0
        console = Console(width=max(Console().width, 120))  # keep the tables readable in logs
        if args.layers and result.sparsify is not None:
            console.print(result.sparsify)
        console.print(result)
        return 0
