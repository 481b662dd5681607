"""The command contract: each CLI subcommand is one registered class in this package."""

from __future__ import annotations

import argparse
import ast
from abc import ABC, abstractmethod
from pathlib import Path

from ..registry import Registry

COMMANDS: Registry[type[Command]] = Registry("command")


class Command(ABC):
    """One ``prunekit <name>`` subcommand. The class docstring's first paragraph is its help."""

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit code. Raise PrunekitError for user errors."""


def plugin_names(package: str) -> list[str]:
    """The names the plugin modules of ``prunekit.<package>`` register, read from their source.

    ``--help`` lists every criterion and granularity without importing them (and torch): each
    plugin file's ``@REGISTRY.register("name")`` decorators are found with :mod:`ast`. A test
    checks that this equals the registry's own list.
    """
    folder = Path(__file__).resolve().parent.parent / package
    paths = sorted(folder.glob("*.py")) if folder.is_dir() else [folder.with_suffix(".py")]
    names = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                for deco in node.decorator_list:
                    if (
                        isinstance(deco, ast.Call)
                        and isinstance(deco.func, ast.Attribute)
                        and deco.func.attr == "register"
                        and deco.args
                        and isinstance(deco.args[0], ast.Constant)
                        and isinstance(deco.args[0].value, str)
                    ):
                        names.append(deco.args[0].value)
    return sorted(names)
