"""Allocation plugins (``scope=``): how the sparsity budget is spread over the layers.

Every allocation works on *unit* scores, so ``"layer"``, ``"global"`` and ``"owl"`` mean the same
thing for weights, blocks, N:M groups, channels and heads. Each module registers one.
"""

from ..registry import import_submodules
from .base import ALLOCATIONS, Allocation, exact_counts

import_submodules(__name__, __path__)

__all__ = ["ALLOCATIONS", "Allocation", "exact_counts"]
