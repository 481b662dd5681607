"""Bad input gets a clear prunekit error naming the problem, and leaves the model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.masks import MaskState
from tests.helpers import make


def snapshot(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model, snap):
    state = snap
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not MaskState(model).masks
    for m in model.modules():
        assert not m._forward_pre_hooks
        assert "_pk_info" not in m.__dict__


CASES = [
    # (kwargs, error type, words the message must contain)
    ({"sparsity": -0.1}, pk.ConfigError, ["[0, 1)"]),
    ({"sparsity": 1.0}, pk.ConfigError, ["[0, 1)"]),
    ({"sparsity": float("nan")}, pk.ConfigError, ["[0, 1)"]),
    ({"sparsity": "half"}, pk.ConfigError, ["number"]),
    ({"sparsity": None}, pk.ConfigError, ["sparsity is required"]),
    ({"sparsity": 0.5, "criterion": "magic"}, pk.UnknownChoiceError, ["magic", "magnitude"]),
    ({"sparsity": 0.5, "granularity": "diagonal"}, pk.UnknownChoiceError, ["diagonal", "N:M"]),
    ({"granularity": "4:2"}, pk.ConfigError, ["4:2", "0 < N < M"]),
    ({"granularity": "0:4"}, pk.ConfigError, ["0 < N < M"]),
    ({"granularity": "2:4", "sparsity": 0.6}, pk.ConfigError, ["contradicts", "0.5"]),
    ({"sparsity": 0.5, "granularity": "block:4"}, pk.ConfigError, ["block:RxC"]),
    ({"sparsity": 0.5, "granularity": "block:0x4"}, pk.ConfigError, ["R, C >= 1"]),
    ({"sparsity": 0.5, "scope": "planet"}, pk.UnknownChoiceError, ["planet", "global", "layer"]),
    ({"granularity": "2:4", "scope": "global"}, pk.ConfigError, ["scope='layer'"]),
    ({"sparsity": 0.5, "include": ["nothing_here"]}, pk.TargetError, ["nothing_here"]),
    ({"sparsity": 0.5, "exclude": [".*"]}, pk.TargetError, ["empty", "prunable layers"]),
    ({"sparsity": 0.5, "include": [nn.ReLU]}, pk.TargetError, ["unsupported layer", "nn.Linear"]),
    ({"sparsity": 0.5, "include": ["1"]}, pk.TargetError, ["unsupported layer", "ReLU"]),
    ({"sparsity": 0.5, "include": ["(("]}, pk.TargetError, ["regex"]),
    ({"sparsity": 0.5, "seed": 1.5}, pk.ConfigError, ["seed"]),
]


@pytest.mark.parametrize(("kwargs", "error", "words"), CASES, ids=[str(c[0]) for c in CASES])
def test_bad_config(kwargs, error, words):
    model, _ = make("mlp")
    snap = snapshot(model)
    with pytest.raises(error) as info:
        pk.prune(model, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert_untouched(model, snap)


@pytest.mark.parametrize(
    ("spec", "words"),
    [("3:5", ["M=5", "not a multiple"]), ("block:3x3", ["not divisible", "3x3"])],
)
def test_granularity_that_does_not_divide(spec, words):
    model, _ = make("mlp")  # input widths 32, 64, 32
    snap = snapshot(model)
    with pytest.raises(pk.WeightError) as info:
        pk.prune(model, None if "block" not in spec else 0.5, granularity=spec)
    assert all(w in str(info.value) for w in words)
    assert_untouched(model, snap)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_weights(bad):
    model, _ = make("mlp")
    with torch.no_grad():
        model[2].weight[3, 4] = bad
    snap = snapshot(model)
    with pytest.raises(pk.WeightError, match=r"2\.weight holds NaN or inf"):
        pk.prune(model, 0.5)
    state = snap
    after = model.state_dict()
    assert all(torch.equal(after[k], v) or not torch.isfinite(v).all() for k, v in state.items())
    assert not MaskState(model).masks


@pytest.mark.parametrize("thing", [None, "model.pt", torch.zeros(3), {"weight": 1}])
def test_non_module_model(thing):
    with pytest.raises(pk.TargetError, match=r"must be a torch\.nn\.Module"):
        pk.prune(thing, 0.5)


def test_errors_are_value_errors_not_asserts():
    with pytest.raises(ValueError):
        pk.prune(make("mlp")[0], 2.0)
    assert issubclass(pk.PrunekitError, ValueError)
