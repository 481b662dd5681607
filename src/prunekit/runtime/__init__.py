"""Sparse inference: sparse-kernel modules, the kernel registry, and ``sparsify``."""

from .cache import DEFAULT_CACHE, DecisionCache, LayerKey
from .kernels import KERNELS, Kernel, available_kernels, get_kernel
from .memory import weight_bytes
from .module import SparseLinear, SparsePointwiseConv, is_sparsifiable
from .report import LayerDecision, SparsifyReport
from .sparsify import sparsify, sparsify_report, unsparsify
from .timing import MedianTimer, Timer

__all__ = [
    "DEFAULT_CACHE",
    "KERNELS",
    "DecisionCache",
    "Kernel",
    "LayerDecision",
    "LayerKey",
    "MedianTimer",
    "SparseLinear",
    "SparsePointwiseConv",
    "SparsifyReport",
    "Timer",
    "available_kernels",
    "get_kernel",
    "is_sparsifiable",
    "sparsify",
    "sparsify_report",
    "unsparsify",
    "weight_bytes",
]
