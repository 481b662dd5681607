"""The MODEL argument and the options that say how to load it, shared by every command."""

from __future__ import annotations

import argparse

from ..modelio import SPEC_HELP, TRUST_SOURCE_HELP


def add_model_options(
    parser: argparse.ArgumentParser, *, factory: bool = True, baseline: str | None = None
) -> None:
    """MODEL, ``--weights``, ``--trust-source``; ``--factory`` for commands that read a prunekit
    folder; ``--baseline MODEL`` (with ``baseline`` as its help) for commands that compare."""
    parser.add_argument("model", metavar="MODEL", help=SPEC_HELP)
    if baseline is not None:
        parser.add_argument("--baseline", default=None, metavar="MODEL", help=baseline)
    parser.add_argument(
        "--weights",
        default=None,
        metavar="FILE.safetensors",
        help="weights for a package.module:factory MODEL",
    )
    if factory:
        parser.add_argument(
            "--factory",
            default=None,
            metavar="package.module:factory",
            help="builds the model a prunekit folder was saved from (if it did not record one)",
        )
    parser.add_argument("--trust-source", action="store_true", help=TRUST_SOURCE_HELP)
