"""Small models of every prunable layer type, with example inputs, for the tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunekit.criteria import CRITERIA
from prunekit.granularity import GRANULARITIES, parse_granularity


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)
    )


def cnn() -> nn.Module:
    """Conv 3x3, conv 1x1, linear: [N, 8, 6, 6] -> [N, 16]."""
    return nn.Sequential(
        nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.Flatten(), nn.Linear(256, 16)
    )


def hf_conv1d() -> nn.Module:
    """Hugging Face's GPT-2 style Conv1D layers (weights stored [in, out])."""
    from transformers.pytorch_utils import Conv1D

    return nn.Sequential(Conv1D(64, 32), nn.ReLU(), Conv1D(16, 64))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (4, 32)),
    "cnn": (cnn, (4, 8, 6, 6)),
    "hf_conv1d": (hf_conv1d, (4, 32)),
}

#: every registered granularity's examples, parsed (element-wise ones; structured ones trace)
_EXAMPLES = [
    parse_granularity(example) for name in GRANULARITIES for example in GRANULARITIES.examples(name)
]
GRANULARITY_SPECS = [g for g in _EXAMPLES if not g.structured]
STRUCTURED_SPECS = [g for g in _EXAMPLES if g.structured]
DATA_FREE_CRITERIA = [n for n in CRITERIA if not CRITERIA.get(n).requires_data]


def make(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A freshly initialised model and an example input batch."""
    factory, shape = MODELS[name]
    torch.manual_seed(seed)
    return factory(), torch.randn(shape)
