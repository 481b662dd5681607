"""Registered calibration statistics: one file each (see :class:`Statistic`)."""

from ...registry import import_submodules
from .base import (
    STATISTICS,
    InputStats,
    LayerStats,
    OutputStats,
    Statistic,
    channel_dim,
    example_case,
    input_columns,
    output_rows,
    signature,
)

import_submodules(__name__, __path__)

__all__ = [
    "STATISTICS",
    "InputStats",
    "LayerStats",
    "OutputStats",
    "Statistic",
    "channel_dim",
    "example_case",
    "input_columns",
    "output_rows",
    "signature",
]
