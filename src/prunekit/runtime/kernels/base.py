"""The kernel contract: how a sparse weight is packed, and how ``x @ W^T + b`` runs on it.

A kernel is one registered class in this package. ``pack`` turns a dense ``[out, in]`` weight into
named tensors (the only weight storage a :class:`~prunekit.runtime.module.SparseLinear` keeps), and
``linear`` computes ``x [n, in] -> y [n, out]`` from them. Kernels are stateless singletons; a
kernel that needs a compiled library reports :meth:`Kernel.available` ``False`` where it cannot
build one, and sparsify then simply does not consider it. A kernel that stores values at lower
precision (``exact = False``) changes the layer's outputs slightly; sparsify only tries it when it
is named in ``kernels=``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from functools import cache

import torch

from ...registry import Registry

KERNELS: Registry[type[Kernel]] = Registry("sparse kernel")


class Kernel(ABC):
    """One sparse matrix layout plus the code that multiplies by it."""

    #: registry name, set by :func:`get_kernel`
    name: str = ""
    #: bump when the layout or the code changes: cached timing decisions then expire
    version: int = 1
    #: whether the packed weight reproduces the dense one exactly (False: lower-precision values)
    exact: bool = True

    def available(self) -> bool:
        """Whether this kernel can run in this process (e.g. its library compiled)."""
        return True

    def supports(self, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether this kernel runs weights of ``dtype`` on ``device``."""
        return device.type == "cpu" and dtype == torch.float32

    def accepts(self, shape: tuple[int, int]) -> bool:
        """Whether this kernel can hold an ``[out, in]`` weight of ``shape``."""
        return True

    def input_dtype(self, packed: Mapping[str, torch.Tensor]) -> torch.dtype:
        """The dtype the inputs must have: that of the stored values unless they are narrower."""
        return packed["values"].dtype

    def fits(self, weight: torch.Tensor) -> bool:
        """Whether this kernel can hold this particular ``[out, in]`` weight (e.g. its pattern)."""
        return True

    def variant(self) -> str:
        """Which code path runs here (e.g. ``avx512``), for reports; empty if there is one."""
        return ""

    def label(self) -> str:
        """``name`` plus the code path that runs, e.g. ``prunekit_bitmask[avx512]``."""
        v = self.variant()
        return f"{self.name}[{v}]" if v else self.name

    @abstractmethod
    def pack(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compress a dense ``[out, in]`` weight into named tensors (fresh storage, not views)."""

    @abstractmethod
    def linear(
        self,
        x: torch.Tensor,
        packed: Mapping[str, torch.Tensor],
        bias: torch.Tensor | None,
        shape: tuple[int, int],
    ) -> torch.Tensor:
        """``x [n, in] @ W^T + bias -> [n, out]`` where ``shape = (out, in)``."""

    def prepare(
        self,
        packed: Mapping[str, torch.Tensor],
        bias: torch.Tensor | None,
        shape: tuple[int, int],
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x [n, in] -> [n, out]`` with everything but ``x`` resolved once (a fast path for the
        many small calls of a decode step). Valid while ``packed`` and ``bias`` stay in place."""
        return lambda x: self.linear(x, packed, bias, shape)

    @abstractmethod
    def unpack(self, packed: Mapping[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        """The dense ``[out, in]`` weight back (for checks and for undoing sparsify)."""


@cache
def get_kernel(name: str) -> Kernel:
    """The shared instance of the kernel registered as ``name``."""
    kernel = KERNELS.get(name)()
    kernel.name = name
    return kernel


def available_kernels(dtype: torch.dtype, device: torch.device) -> list[Kernel]:
    """Every registered kernel that can run ``dtype`` weights on ``device`` here."""
    kernels = [get_kernel(n) for n in KERNELS]
    return [k for k in kernels if k.supports(dtype, device) and k.available()]
