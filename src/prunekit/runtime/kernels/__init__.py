"""Sparse kernels; each module in this package registers one (see :mod:`.base`)."""

from ...registry import import_submodules
from .base import KERNELS, Kernel, available_kernels, get_kernel

import_submodules(__name__, __path__)

__all__ = ["KERNELS", "Kernel", "available_kernels", "get_kernel"]
