"""Layer-wise solvers: choose masks and rewrite the kept weights from calibration statistics."""

from .base import Solver

__all__ = ["Solver"]
