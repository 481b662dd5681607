"""``prunekit demo``: the end-to-end demo on scikit-learn's digits."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from .base import COMMANDS, Command


@COMMANDS.register("demo", examples=(["--help"],))  # argv
class DemoCommand(Command):
    """Train a CNN on digits, prune it to 90% unstructured and to 2:4, and measure both."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quick", action="store_true", help="a few epochs only (smoke test)")
        parser.add_argument("--json", action="store_true", help="print the rows as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from ..demo import QUICK, DemoSettings, demo_table, rows_as_dicts, run_demo

        settings = QUICK if args.quick else DemoSettings()
        rows = run_demo(settings, progress=not args.json)
        if args.json:
            print(json.dumps(rows_as_dicts(rows), indent=2))
        else:
            Console().print(demo_table(rows))
        return 0
