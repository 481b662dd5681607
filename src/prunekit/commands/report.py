"""``prunekit report``: per-layer sparsity of a model or checkpoint."""

from __future__ import annotations

import argparse
import json

from ._model_options import add_model_options
from .base import COMMANDS, Command


@COMMANDS.register("report", examples=(["--help"],))  # argv
class ReportCommand(Command):
    """Print per-layer sparsity, N:M validity, parameters and size of a model or checkpoint."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_options(parser, factory=False)
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console

        from ..analysis.report import report
        from ..modelio import load_model

        rep = report(load_model(args.model, args.weights, trust_source=args.trust_source))
        if args.json:
            print(json.dumps(rep.to_dict(), indent=2))
        else:
            Console(width=max(Console().width, 120)).print(rep)
        return 0
