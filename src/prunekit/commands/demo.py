"""``prunekit demo``: the end-to-end demo on scikit-learn's digits."""

from __future__ import annotations

import argparse
import json

from .base import COMMANDS, Command


@COMMANDS.register("demo", examples=(["--help"],))  # argv
class DemoCommand(Command):
    """Train a CNN and an MLP on digits, prune them four ways, and measure the payoff.

    Every model trains for the same number of epochs; size on disk, resident weight memory and
    batch-1 latency are each shown as "x smaller" / "x faster" than the dense model (above 1 is
    better), measured in one run on 1 thread.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quick", action="store_true", help="a few epochs only (smoke test)")
        parser.add_argument("--json", action="store_true", help="print the rows as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console

        from ..demo import QUICK, DemoSettings, demo_legend, demo_table, rows_as_dicts, run_demo

        settings = QUICK if args.quick else DemoSettings()
        rows = run_demo(settings, progress=not args.json)
        if args.json:
            print(json.dumps(rows_as_dicts(rows), indent=2))
            return 0
        table = demo_table(rows)
        width = Console(width=1000).measure(table).maximum  # the table's natural width
        console = Console(width=max(Console().width, width))  # never cut to 80 columns in a log
        console.print(table)
        console.print(demo_legend())
        return 0
