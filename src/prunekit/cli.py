"""``prunekit`` command line. Subcommands live in :mod:`prunekit.commands`, one per file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import PrunekitError


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Prune PyTorch networks; measure that they are really smaller and faster.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        cls = COMMANDS.get(name)
        doc = (cls.__doc__ or "").strip().replace("%", "%%")  # argparse formats help with %
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc)
        command = cls()
        command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunekit`` console script. Errors print as one line, exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return args._command.run(args)
    except (PrunekitError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"prunekit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prunekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
