"""prunekit: prune PyTorch networks, and measure that they are really smaller and faster."""

from importlib.metadata import PackageNotFoundError, version

from . import evaluate
from .allocation.global_threshold import Global
from .allocation.layer import Layer
from .allocation.owl import OWL
from .analysis.report import Report, report
from .analysis.sensitivity import sensitivity
from .api import finalize, prune
from .config import PruneConfig, dump_recipe, load_recipe
from .criteria.apoz import APoZ
from .criteria.bn_scaling import BNScaling
from .criteria.fpgm import FPGM
from .criteria.magnitude import L2, Magnitude
from .criteria.mean_activation import MeanActivation
from .criteria.obd import OBD
from .criteria.random import Random
from .criteria.regression import Regression
from .criteria.sparsegpt import SparseGPT
from .criteria.taylor import Taylor
from .criteria.wanda import Wanda
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
    "FPGM",
    "L2",
    "NM",
    "OBD",
    "OWL",
    "APoZ",
    "BNScaling",
    "Block",
    "Channel",
    "CheckpointError",
    "ConfigError",
    "Cubic",
    "Global",
    "Head",
    "Iterative",
    "Layer",
    "Magnitude",
    "MaskState",
    "MeanActivation",
    "OneShot",
    "PruneConfig",
    "PrunekitError",
    "Pruner",
    "Random",
    "Regression",
    "Report",
    "SparseGPT",
    "TargetError",
    "Taylor",
    "UnknownChoiceError",
    "Unstructured",
    "VerificationError",
    "Wanda",
    "WeightError",
    "__version__",
    "dump_recipe",
    "evaluate",
    "finalize",
    "load",
    "load_recipe",
    "prune",
    "report",
    "save",
    "sensitivity",
    "shrink",
    "sparsify",
]
