"""CLI subcommands; each module in this package registers one."""

from ..registry import import_submodules
from .base import COMMANDS, Command

import_submodules(__name__, __path__)

__all__ = ["COMMANDS", "Command"]
