"""prunekit: prune PyTorch networks, and measure that they are really smaller and faster."""

from importlib.metadata import PackageNotFoundError, version

from . import evaluate
from .analysis.report import Report, report
from .analysis.sensitivity import sensitivity
from .api import finalize, prune
from .config import PruneConfig
from .errors import (
    CheckpointError,
    ConfigError,
    PrunekitError,
    TargetError,
    UnknownChoiceError,
    VerificationError,
    WeightError,
)
from .formats.checkpoint import load, save
from .granularity.block import Block
from .granularity.channel import Channel
from .granularity.head import Head
from .granularity.nm import NM
from .granularity.unstructured import Unstructured
from .masks import MaskState
from .pruner import Pruner
from .runtime import sparsify
from .schedule import Cubic, Iterative, OneShot
from .structure.shrink import shrink

try:
    __version__ = version("prunekit")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"

__all__ = [
    "NM",
    "Block",
    "Channel",
    "CheckpointError",
    "ConfigError",
    "Cubic",
    "Head",
    "Iterative",
    "MaskState",
    "OneShot",
    "PruneConfig",
    "PrunekitError",
    "Pruner",
    "Report",
    "TargetError",
    "UnknownChoiceError",
    "Unstructured",
    "VerificationError",
    "WeightError",
    "__version__",
    "evaluate",
    "finalize",
    "load",
    "prune",
    "report",
    "save",
    "sensitivity",
    "shrink",
    "sparsify",
]
