"""prunekit: prune PyTorch networks, and measure that they are really smaller and faster.

The public names load lazily (PEP 562), so that ``prunekit --help`` answers without importing
torch; ``import prunekit as pk; pk.prune`` imports what it needs on first use.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("prunekit")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"

#: public name -> the module that defines it (relative to this package)
_EXPORTS = {
    "Global": ".allocation.global_threshold",
    "Layer": ".allocation.layer",
    "OWL": ".allocation.owl",
    "Report": ".analysis.report",
    "report": ".analysis.report",
    "sensitivity": ".analysis.sensitivity",
    "finalize": ".api",
    "prune": ".api",
    "PruneConfig": ".config",
    "dump_recipe": ".config",
    "load_recipe": ".config",
    "APoZ": ".criteria.apoz",
    "BNScaling": ".criteria.bn_scaling",
    "FPGM": ".criteria.fpgm",
    "L2": ".criteria.magnitude",
    "Magnitude": ".criteria.magnitude",
    "MeanActivation": ".criteria.mean_activation",
    "OBD": ".criteria.obd",
    "Random": ".criteria.random",
    "Regression": ".criteria.regression",
    "SparseGPT": ".criteria.sparsegpt",
    "Taylor": ".criteria.taylor",
    "Wanda": ".criteria.wanda",
    "CheckpointError": ".errors",
    "ConfigError": ".errors",
    "PrunekitError": ".errors",
    "TargetError": ".errors",
    "UnknownChoiceError": ".errors",
    "VerificationError": ".errors",
    "WeightError": ".errors",
    "load": ".formats.checkpoint",
    "save": ".formats.checkpoint",
    "Block": ".granularity.block",
    "Channel": ".granularity.channel",
    "Head": ".granularity.head",
    "NM": ".granularity.nm",
    "Unstructured": ".granularity.unstructured",
    "MaskState": ".masks",
    "Pruner": ".pruner",
    "sparsify": ".runtime",
    "optimize_for_inference": ".runtime.fuse",
    "Cubic": ".schedule",
    "Iterative": ".schedule",
    "OneShot": ".schedule",
    "shrink": ".structure.shrink",
    "export_onnx": ".export",
}
_SUBMODULES = {"evaluate"}

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers and IDEs
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
    from .export import export_onnx
    from .formats.checkpoint import load, save
    from .granularity.block import Block
    from .granularity.channel import Channel
    from .granularity.head import Head
    from .granularity.nm import NM
    from .granularity.unstructured import Unstructured
    from .masks import MaskState
    from .pruner import Pruner
    from .runtime import sparsify
    from .runtime.fuse import optimize_for_inference
    from .schedule import Cubic, Iterative, OneShot
    from .structure.shrink import shrink


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})


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
    "export_onnx",
    "finalize",
    "load",
    "load_recipe",
    "optimize_for_inference",
    "prune",
    "report",
    "save",
    "sensitivity",
    "shrink",
    "sparsify",
]
