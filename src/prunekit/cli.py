"""``prunekit`` command line. Subcommands live in :mod:`prunekit.commands`, one per file.

Building the parser imports no torch: command modules import it inside ``run``, so ``--help``
answers at once. Every user error prints one line and exits with code 2; a mistyped option or
command gets the closest valid ones as suggestions.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from .errors import PrunekitError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, with "did you mean" suggestions."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:  # report them through the subcommand's parser, which knows its options
            sub = getattr(ns, "_parser", self)
            sub.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {self._suggest(message)}\n")

    def _suggest(self, message: str) -> str:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            options = [s for a in self._actions for s in a.option_strings]
            hints = []
            for word in unknown.group(1).split():
                flag = word.split("=", 1)[0]
                close = difflib.get_close_matches(flag, options, n=2, cutoff=0.6)
                if flag.startswith("-") and close:
                    hints.append(f"{flag}: did you mean {' or '.join(close)}?")
            return message + (f" ({'; '.join(hints)})" if hints else "")
        choice = re.match(r"argument (\S+): invalid choice: '([^']*)'", message)
        if choice:
            action = next((a for a in self._actions if a.choices), None)
            choices = list(action.choices) if action is not None else []
            close = difflib.get_close_matches(choice.group(2), choices, n=1)
            if close:
                return f"{message} (did you mean {close[0]!r}?)"
        return message


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .commands import COMMANDS

    parser = Parser(
        prog="prunekit",
        description="Prune PyTorch networks; measure that they are really smaller and faster.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for name in COMMANDS:
        cls = COMMANDS.get(name)
        doc = inspect.cleandoc(cls.__doc__ or "").replace("%", "%%")  # argparse formats help with %
        p = sub.add_parser(
            name,
            help=doc.split("\n\n")[0].replace("\n", " ") if doc else None,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command = cls()
        command.add_arguments(p)
        p.set_defaults(_command=command, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunekit`` console script. Errors print as one line, exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        args._argv = list(argv if argv is not None else sys.argv[1:])
        return args._command.run(args)
    except (PrunekitError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        message = " ".join(str(e).split())  # one line, whatever the error's own layout
        print(f"prunekit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prunekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
