"""The calibration-statistic contract and the running accumulators the hooks feed.

A :class:`Statistic` is one registered file: it names the stream it reads (a layer's input, as
``[G, N, cols]`` columns aligned with the ``[out, in]`` matrix view, or the post-activation
output as ``[N, channels]`` rows) and adds each batch into named tensors of an accumulator.
"""

from __future__ import annotations

import warnings
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import WeightError
from ...registry import Registry
from ...targets import is_hf_conv1d

STATISTICS: Registry[type[Statistic]] = Registry("calibration statistic")


class Statistic(ABC):
    """A running statistic of one target layer, gathered by forward hooks.

    ``examples`` are ``(layer kind, input shape)`` pairs (see :func:`example_case`) that the
    contract tests feed through a :class:`~prunekit.calibrate.Collector`.
    """

    #: ``"input"`` (fed :func:`input_columns` of the layer's input) or ``"output"`` (fed the
    #: output rows after the activation that consumes the layer)
    source: ClassVar[str]
    #: other statistics whose accumulated tensors already give this one
    implied_by: ClassVar[frozenset[str]] = frozenset()
    examples: ClassVar[tuple[tuple[str, tuple[int, ...]], ...]] = ()

    @staticmethod
    @abstractmethod
    def add(values: dict[str, torch.Tensor], rows: torch.Tensor) -> None:
        """Add one batch's ``rows`` into ``values`` (created on first use), in place."""


def accumulate(values: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    """``values[key] += value``, creating the entry on first use."""
    if key in values:
        values[key].add_(value)
    else:
        values[key] = value


def example_case(
    kind: str, shape: tuple[int, ...], seed: int = 0
) -> tuple[nn.Module, torch.Tensor]:
    """A small seeded layer of ``kind`` (``linear``, ``conv1d``, ``conv2d``) and an input of
    ``shape`` for it."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "linear":
        layer: nn.Module = nn.Sequential(nn.Linear(shape[-1], 6), nn.ReLU())
    elif kind == "conv1d":
        layer = nn.Sequential(nn.Conv1d(shape[1], 4, 3, padding=1), nn.ReLU())
    elif kind == "conv2d":
        layer = nn.Sequential(nn.Conv2d(shape[1], 4, 3, padding=1, groups=1), nn.ReLU())
    else:
        raise ValueError(f"unknown example layer kind {kind!r}")
    return layer, torch.randn(shape, generator=gen)


# ------------------------------------------------------------------------------- layer views
def input_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as ``[groups, N, cols]`` float32 rows, aligned with its ``[out, in]`` view.

    Linear / HF Conv1D: ``[..., in] -> [1, N, in]``. Conv1d/2d: unfolded patches ``[B, C*k, L]``
    reordered to the matrix view's column order (kernel position, then channel fastest) and split
    by conv group: ``[G, B*L, k*C/G]``.
    """
    if isinstance(module, nn.Linear) or is_hf_conv1d(module):
        return x.reshape(1, -1, x.shape[-1]).float()
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        pad = module._reversed_padding_repeated_twice
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, list(pad), mode=mode) if any(pad) else x
        if isinstance(module, nn.Conv1d):  # [B, C, L] -> [B, C, 1, L]
            x = x.unsqueeze(-2)
            kernel, dil, stride = (
                (1, *module.kernel_size),
                (1, *module.dilation),
                (1, *module.stride),
            )
        else:
            kernel, dil, stride = module.kernel_size, module.dilation, module.stride
        cols = F.unfold(x.float(), kernel, dilation=dil, stride=stride)  # [B, C*kh*kw, L]
        b, _, length = cols.shape
        g, c, k = module.groups, module.in_channels, kernel[0] * kernel[1]
        cols = cols.view(b, g, c // g, k, length).permute(1, 0, 4, 3, 2)  # [G, B, L, k, C/G]
        return cols.reshape(g, b * length, k * (c // g))
    raise WeightError(
        f"{type(module).__name__} is not supported by input statistics "
        "(Linear, Conv1d, Conv2d and transformers Conv1D are)"
    )


def channel_dim(module: nn.Module) -> int:
    """The dimension of a layer's output that holds its output channels."""
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


def output_rows(y: torch.Tensor, dim: int) -> torch.Tensor:
    """An output tensor as ``[N, channels]`` float32 rows, channels taken from ``dim``."""
    return y.movedim(dim, -1).reshape(-1, y.shape[dim]).float()


def signature(module: nn.Module) -> tuple:
    """What :func:`input_columns` depends on besides the input itself."""
    if isinstance(module, nn.modules.conv._ConvNd):
        keys = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
        return (type(module).__name__, *(getattr(module, k) for k in keys))
    return ("linear",)


# ------------------------------------------------------------------------------ accumulators
class InputStats:
    """Running input statistics of one layer input seen as ``[G, N, cols]``.

    ``n`` counts rows; ``values`` holds each statistic's tensors (``sq`` ``[G, cols]`` Σ x²,
    ``xtx`` ``[G, cols, cols]`` XᵀX, ...). Layers fed the very same tensor share one.
    """

    def __init__(self, statistics: list[type[Statistic]], signature: tuple) -> None:
        self.statistics = statistics
        #: how the input is unfolded into columns; layers share stats only if this matches
        self.signature = signature
        self.n = 0
        self.values: dict[str, torch.Tensor] = {}
        self._last: weakref.ref | None = None

    def seen(self, x: torch.Tensor) -> bool:
        return self._last is not None and self._last() is x

    def add(self, module: nn.Module, x: torch.Tensor) -> None:
        self._last = weakref.ref(x)
        cols = input_columns(module, x.detach())  # [G, N, cols]
        self.n += cols.shape[1]
        for stat in self.statistics:
            stat.add(self.values, cols)

    @property
    def xtx(self) -> torch.Tensor | None:
        """XᵀX ``[G, cols, cols]`` (the ``hessian`` statistic), or None."""
        return self.values.get("xtx")

    @property
    def sumsq(self) -> torch.Tensor | None:
        """Σ x_j² per input column, ``[G, cols]``."""
        if self.xtx is not None:
            return self.xtx.diagonal(dim1=1, dim2=2)
        return self.values.get("sq")

    def norms(self) -> torch.Tensor:
        """‖X_j‖₂ per input column, ``[G, cols]`` (root mean square, scale-free for ranking)."""
        return (self.sumsq / max(self.n, 1)).sqrt()

    def hessian(self) -> torch.Tensor:
        """H = 2XᵀX/N, ``[G, cols, cols]`` float32."""
        if self.xtx is None:
            raise RuntimeError("hessian statistics were not collected")
        return self.xtx * (2.0 / max(self.n, 1))


class OutputStats:
    """Running statistics of one layer's post-activation output rows ``[N, out]``."""

    def __init__(self, statistics: list[type[Statistic]]) -> None:
        self.statistics = statistics
        self.values: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, rows: torch.Tensor) -> None:  # rows: [N, out]
        for stat in self.statistics:
            stat.add(self.values, rows)
        self.n += rows.shape[0]

    def apoz(self) -> torch.Tensor:
        """Average percentage of zeros per channel, ``[out]``."""
        return (self.values["zeros"] / max(self.n, 1)).float()

    def mean(self) -> torch.Tensor:
        """Mean post-activation output per channel, ``[out]``."""
        return (self.values["total"] / max(self.n, 1)).float()


@dataclass
class LayerStats:
    """Everything calibration gathered for one target."""

    inputs: InputStats | None = None
    #: statistics of the output after the activation that consumes it
    outputs: OutputStats | None = None
    #: the same, taken as ReLU(output): used when no activation module consumes the output
    raw_outputs: OutputStats | None = None

    def post_activation(self, name: str) -> OutputStats:
        if self.outputs is not None and self.outputs.n:
            return self.outputs
        warnings.warn(
            f"{name}: no activation module consumes this layer's output; its post-activation "
            "statistics are taken as ReLU(output)",
            stacklevel=3,
        )
        return self.raw_outputs

    def accumulators(self) -> list[Any]:
        return [a for a in (self.inputs, self.outputs, self.raw_outputs) if a is not None]
