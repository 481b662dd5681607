"""Criterion plugins; each module in this package registers one or more."""

from ..registry import import_submodules
from .base import CRITERIA, Criterion, ScoreContext, Solver

import_submodules(__name__, __path__)

__all__ = ["CRITERIA", "Criterion", "ScoreContext", "Solver"]
