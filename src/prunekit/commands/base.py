"""The command contract: each CLI subcommand is one registered class in this package."""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod

from ..registry import Registry

COMMANDS: Registry[type[Command]] = Registry("command")


class Command(ABC):
    """One ``prunekit <name>`` subcommand. The class docstring's first line is its help."""

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit code. Raise PrunekitError for user errors."""
