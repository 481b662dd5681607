"""Sparse-kernel modules: drop-in inference replacements for a pruned Linear or 1x1 conv.

A :class:`SparseLinear` keeps only its kernel's packed tensors (as buffers, so they follow
``.to()``, ``state_dict`` and ``deepcopy``) plus the bias; the dense weight is not kept. It is for
inference: it does not train its weight, and it refuses inputs that require grad so that a silent
break in backpropagation is impossible.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import granularity_of, record_granularity
from ..provenance import restore as restore_provenance
from ..provenance import shape_before
from ..targets import Target, is_hf_conv1d
from .kernels import get_kernel

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_pointwise_conv(module: nn.Module) -> bool:
    """A conv that is a matrix product over channels: 1x1 kernel, stride 1, no padding, 1 group."""
    return (
        isinstance(module, _CONV)
        and all(k == 1 for k in module.kernel_size)
        and all(s == 1 for s in module.stride)
        and (module.padding in ("valid", "same") or all(p == 0 for p in module.padding))
        and module.groups == 1
    )


def is_sparsifiable(module: nn.Module) -> bool:
    """Layers that :func:`~prunekit.runtime.sparsify.sparsify` can swap."""
    return isinstance(module, nn.Linear) or is_hf_conv1d(module) or is_pointwise_conv(module)


def _carry_granularity(src: nn.Module, dst: nn.Module) -> None:
    """Keep the pruned granularity (and the pre-shrink shape) across a swap, for reports and
    N:M checks."""
    spec = granularity_of(src, "weight")
    if spec is not None:
        record_granularity(dst, "weight", spec)
    before = shape_before(src, "weight")
    if before is not None:
        restore_provenance(dst, {"weight": before}, None)


class SparseLinear(nn.Module):
    """``y = x @ W^T + b`` over the last dimension of ``x``, with ``W`` held by a sparse kernel."""

    def __init__(
        self,
        packed: dict[str, torch.Tensor],
        bias: torch.Tensor | None,
        shape: tuple[int, int],
        kernel: str,
        source: str = "Linear",
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = int(shape[0]), int(shape[1])
        self.kernel = kernel
        #: type name of the module this replaced, for reports and :func:`unsparsify`
        self.source = source
        self._packed_names = tuple(packed)
        for name, t in packed.items():
            self.register_buffer(name, t)
        self.bias = (
            nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        )

    @classmethod
    def from_module(cls, module: nn.Module, kernel: str) -> SparseLinear:
        """Pack the weight of a Linear, a Hugging Face Conv1D or a pointwise conv."""
        if not is_sparsifiable(module):
            raise ConfigError(f"cannot sparsify {type(module).__name__}: {SPARSIFIABLE}")
        w = Target("", module).matrix()  # [out, in] for every supported layer type
        packed = get_kernel(kernel).pack(w)
        if isinstance(module, _CONV):
            sparse: SparseLinear = SparsePointwiseConv(
                packed, module.bias, tuple(w.shape), kernel, type(module).__name__
            )
            sparse.spatial_dims = len(module.kernel_size)
        else:
            sparse = cls(packed, module.bias, tuple(w.shape), kernel, type(module).__name__)
        _carry_granularity(module, sparse)
        return sparse

    @property
    def packed(self) -> dict[str, torch.Tensor]:
        bufs = self._buffers  # direct access: this runs on every forward call
        return {name: bufs[name] for name in self._packed_names}

    def weight_matrix(self) -> torch.Tensor:
        """The dense ``[out, in]`` weight, rebuilt from the packed tensors."""
        return get_kernel(self.kernel).unpack(self.packed, (self.out_features, self.in_features))

    def to_dense_module(self) -> nn.Module:
        """A dense module of the type this one replaced, with the same weight and bias."""
        w = self.weight_matrix()  # [out, in]
        bias = self.bias is not None
        if self.source == "Conv1D":  # Hugging Face GPT-2 style, weight [in, out]
            from transformers.pytorch_utils import Conv1D

            dense = Conv1D(self.out_features, self.in_features)
            if not bias:
                dense.bias = None
            weight = w.t()
        else:
            dense = nn.Linear(self.in_features, self.out_features, bias=bias)
            weight = w
        with torch.no_grad():
            dense.weight.copy_(weight)
            if bias:
                dense.bias.copy_(self.bias)
        _carry_granularity(self, dense)
        return dense.to(device=w.device, dtype=w.dtype)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 [n, in] -> [n, out]``."""
        if x2.requires_grad and torch.is_grad_enabled():
            raise ConfigError(
                "sparse-kernel modules are inference-only; run under torch.no_grad() or "
                "torch.inference_mode()"
            )
        bound = self.__dict__.get("_bound")
        if bound is None:  # first call, or after _apply (.to(), .float(), ...) moved the arrays
            packed, kernel = self.packed, get_kernel(self.kernel)
            shape = (self.out_features, self.in_features)
            device = packed["values"].device
            bias = self.bias
            bound = (kernel.input_dtype(packed), device, kernel.prepare(packed, bias, shape))
            self.__dict__["_bound"] = bound
        dtype, device, run = bound
        if x2.dtype is not dtype or x2.device != device:
            raise ConfigError(
                f"input is {x2.dtype} on {x2.device}, the sparse layer takes {dtype} on {device}"
            )
        return run(x2)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_bound", None)  # a closure over raw pointers: rebuilt on the next call
        return state

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_bound", None)  # the arrays may move or change type
        return super()._apply(fn, recurse)

    def __setattr__(self, name: str, value) -> None:
        self.__dict__.pop("_bound", None)  # e.g. a packed buffer or the bias replaced
        super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self._matmul(x.reshape(-1, self.in_features))  # [..., in] -> [n, in] -> [n, out]
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        nnz = int(torch.count_nonzero(self.packed["values"]))  # some layouts store padding
        density = nnz / max(1, self.out_features * self.in_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"kernel={self.kernel}, density={density:.2%}, bias={self.bias is not None}"
        )


class SparsePointwiseConv(SparseLinear):
    """A 1x1 conv over channels: ``x [b, c, *spatial] -> [b, out, *spatial]`` (or unbatched)."""

    spatial_dims: int = 2

    def to_dense_module(self) -> nn.Module:
        conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.spatial_dims - 1]
        dense = conv_cls(self.in_features, self.out_features, 1, bias=self.bias is not None)
        w = self.weight_matrix()  # [out, in] -> [out, in, 1, ...]
        with torch.no_grad():
            dense.weight.copy_(w.reshape(*w.shape, *([1] * self.spatial_dims)))
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense.to(device=w.device, dtype=w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == self.spatial_dims + 1
        xb = x.unsqueeze(0) if unbatched else x
        xl = xb.movedim(1, -1)  # [b, c, *s] -> [b, *s, c]
        y = self._matmul(xl.reshape(-1, self.in_features))  # [b*prod(s), out]
        y = y.reshape(*xl.shape[:-1], self.out_features).movedim(-1, 1)  # [b, out, *s]
        return y.squeeze(0) if unbatched else y


SPARSIFIABLE = "nn.Linear, transformers Conv1D, or a 1x1 conv with stride 1, no padding, 1 group"
