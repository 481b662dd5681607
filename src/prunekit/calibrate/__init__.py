"""Calibration: batches, registered forward-hook statistics, the block runner and gradients.

* :mod:`.batches`: normalising, validating (NaN/inf, layout, a dry forward) and running batches;
* :mod:`.statistics`: one file per statistic (``norms``, ``hessian``, ``outputs``, ...) in the
  :data:`STATISTICS` registry, and the accumulators the hooks feed;
* :mod:`.collector`: the forward hooks and whole-model collection;
* :mod:`.blocks`: the block-by-block runner, with an optional per-block ``after`` stage;
* :mod:`.gradients`: loss gradients over the batches (Taylor, OBD);
* :mod:`.memory`: handing the C heap's freed pages back between the runner's steps.
"""

from .batches import (
    Batch,
    as_batches,
    calibration_mode,
    check_batches,
    model_device,
    run_batch,
    to_device,
)
from .blocks import (
    BlockCaller,
    BlockInputs,
    BlockStage,
    capture_inputs,
    find_blocks,
    first_output,
    hidden_key,
    run_blockwise,
)
from .collector import Collector, all_reduce, collect, is_activation
from .gradients import gradient_sums, model_loss
from .statistics import (
    STATISTICS,
    InputStats,
    LayerStats,
    OutputStats,
    Statistic,
    channel_dim,
    input_columns,
    output_rows,
)

__all__ = [
    "STATISTICS",
    "Batch",
    "BlockCaller",
    "BlockInputs",
    "BlockStage",
    "Collector",
    "InputStats",
    "LayerStats",
    "OutputStats",
    "Statistic",
    "all_reduce",
    "as_batches",
    "calibration_mode",
    "capture_inputs",
    "channel_dim",
    "check_batches",
    "collect",
    "find_blocks",
    "first_output",
    "gradient_sums",
    "hidden_key",
    "input_columns",
    "is_activation",
    "model_device",
    "model_loss",
    "output_rows",
    "run_batch",
    "run_blockwise",
    "to_device",
]
