"""``torch_csr``: PyTorch's own CSR tensor (MKL sparse BLAS on CPU), the baseline to beat.

Pure PyTorch, so it is also the fallback wherever the compiled kernel cannot be built.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from .base import KERNELS, Kernel


def csr_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rowptr [out+1], col [nnz], values [nnz])`` of a dense ``[out, in]`` weight (int64)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = weight.detach().to_sparse_csr()
    return csr.crow_indices(), csr.col_indices(), csr.values()


def csr_dense(rowptr, col, values, shape: tuple[int, int]) -> torch.Tensor:
    """The dense ``[out, in]`` matrix of CSR parts (any integer index dtypes)."""
    counts = (rowptr[1:] - rowptr[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(shape[0]), counts)
    dense = torch.zeros(shape, dtype=values.dtype)
    dense[rows, col.long()] = values
    return dense


@KERNELS.register("torch_csr", examples=("unstructured:0.5", "unstructured:0.9"))
class TorchCSR(Kernel):
    """CSR with int32 indices through ``torch.addmm`` on a sparse CSR tensor."""

    def supports(self, dtype: torch.dtype, device: torch.device) -> bool:
        return device.type == "cpu" and dtype in (torch.float32, torch.float64)

    def pack(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        rowptr, col, values = csr_parts(weight)
        return {
            "rowptr": rowptr.to(torch.int32),
            "col": col.to(torch.int32),
            "values": values.clone(),
        }

    def linear(self, x, packed: Mapping[str, torch.Tensor], bias, shape):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            w = torch.sparse_csr_tensor(
                packed["rowptr"], packed["col"], packed["values"], shape, check_invariants=False
            )
        # [out, in] @ [in, n] -> [out, n]; returned as the [n, out] view
        if bias is None:
            return torch.mm(w, x.t()).t()
        return torch.addmm(bias.unsqueeze(1), w, x.t()).t()

    def unpack(self, packed, shape):
        return csr_dense(packed["rowptr"], packed["col"], packed["values"], shape)
