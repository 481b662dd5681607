"""``prunekit prune``: prune a model once and write a finalized checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ..analysis.report import report
from ..api import finalize
from ..config import PruneConfig
from ..modelio import SPEC_HELP, load_model
from ..pruner import Pruner
from .base import COMMANDS, Command


def add_prune_options(parser: argparse.ArgumentParser) -> None:
    """The options shared by every command that prunes."""
    parser.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="fraction of weights to remove, in [0, 1); optional for N:M",
    )
    parser.add_argument(
        "--granularity",
        default="unstructured",
        help="unstructured, N:M (e.g. 2:4), block:RxC (default: unstructured)",
    )
    parser.add_argument("--criterion", default="magnitude", help="e.g. magnitude, l2, random")
    parser.add_argument("--scope", default="layer", help="layer or global (default: layer)")
    parser.add_argument(
        "--include",
        action="append",
        default=None,
        metavar="REGEX",
        help="prune only modules whose name matches (repeatable)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="REGEX",
        help="never prune modules whose name matches (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    return PruneConfig(
        sparsity=args.sparsity,
        granularity=args.granularity,
        criterion=args.criterion,
        scope=args.scope,
        include=args.include,
        exclude=args.exclude,
        seed=args.seed,
    )


@COMMANDS.register("prune")
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
        add_prune_options(parser)
        parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")

    def run(self, args: argparse.Namespace) -> int:
        config = config_from_args(args)
        config.resolve()  # fail on a bad config before loading a large model
        model = load_model(args.model, args.weights)
        pruner = Pruner(model, config, progress=True)
        pruner.step()
        finalize(model)
        from .. import save

        is_directory = Path(args.model).is_dir()
        source = {} if is_directory else {"source": args.model}  # lets `report OUT/` rebuild it
        save(model, args.output, dense=True, config=config, extra=source)
        Console().print(report(model))
        print(f"wrote {args.output}")
        return 0
