"""The CLI's pruning options, derived from :class:`~prunekit.config.PruneConfig`'s fields.

Each field becomes ``--<name>`` with the field's help; ``--config RECIPE`` reads a YAML or JSON
recipe, and flags given on the command line override it; ``--print-config`` prints the recipe of
the command line. Only this module knows how a field is spelled on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from ..config import PruneConfig, load_recipe, yes_no
from ..errors import ConfigError


def _plugin_value(text: str) -> str | dict[str, Any]:
    """A plugin option: a name/spec, or a JSON object with a "type" key and parameters."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not a valid JSON object: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _yes_no_value(text: str) -> bool:
    """A boolean option's value, refused by argparse (usage line and exit 2) when not yes/no."""
    try:
        return yes_no(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"{e} (yes/true/1/on or no/false/0/off)") from None


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--sparsity``, ``--granularity``, ... (one per config field), ``--config``,
    ``--print-config``. Unset flags stay absent from the namespace, so a recipe's values hold."""
    group = parser.add_argument_group("pruning (the fields of a recipe)")
    defaults = PruneConfig()
    for f in dataclasses.fields(PruneConfig):
        meta = f.metadata
        default = getattr(defaults, f.name)
        shown = default if isinstance(default, (str, int, float, type(None))) else "oneshot"
        kwargs: dict[str, Any] = {
            "default": argparse.SUPPRESS,
            "help": f"{meta['help']} (default: {shown})",
        }
        if meta.get("selectors"):
            kwargs.update(action="append", metavar="REGEX")
        elif "plugin" in meta:
            kwargs.update(type=_plugin_value, metavar=f.name.upper())
        elif meta["type"] is yes_no:  # `--refine` alone means yes; `--refine no` is accepted
            kwargs.update(type=_yes_no_value, nargs="?", const=True, metavar="yes|no")
        else:
            kwargs.update(type=meta["type"], metavar=meta["type"].__name__.upper())
        group.add_argument(f"--{f.name.replace('_', '-')}", **kwargs)
    group.add_argument(
        "--config",
        default=None,
        metavar="RECIPE.yaml",
        help="a recipe (YAML or JSON) with any of the options above; flags given on the command "
        "line override it",
    )
    group.add_argument(
        "--print-config",
        action="store_true",
        help="print the recipe (YAML) of this command line and exit",
    )


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    """The recipe (if any) with the command line's flags applied on top."""
    base = load_recipe(args.config) if getattr(args, "config", None) else PruneConfig()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PruneConfig)
             if hasattr(args, f.name)}  # fmt: skip
    config = base.replace(**given)
    config.resolve()  # fail on a bad config before anything is loaded
    return config
