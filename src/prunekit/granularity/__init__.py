"""Granularity plugins; each module in this package registers one."""

from ..registry import import_submodules
from .base import GRANULARITIES, Granularity, parse_granularity, prune_lowest

import_submodules(__name__, __path__)

__all__ = ["GRANULARITIES", "Granularity", "parse_granularity", "prune_lowest"]
