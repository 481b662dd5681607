"""The zoo: 50% channel (and head) pruning of real architectures, shrunk and verified."""

from __future__ import annotations

import warnings

import pytest
import torch

import prunekit as pk
from prunekit.structure.graph import call_model, flatten
from prunekit.structure.shrink import max_rel_error

from .zoo import ATTENTION, INPUTS, ZOO

pytest.importorskip("transformers")

SLOW = {"mobilenet_v2", "efficientnet"}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cases(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _outputs(model, inputs):
    with torch.no_grad():
        return call_model(model.eval(), inputs)


def prune_and_shrink(name: str, granularity: str):
    model, inputs = ZOO[name](), INPUTS[name]()
    before = _params(model)
    reference = _outputs(ZOO[name](), inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unexpected "left unpruned" warning in the zoo
        pk.prune(model, 0.5, granularity=granularity, example_inputs=inputs)
    small = pk.shrink(model, inputs)
    return model, small, inputs, before, reference


@pytest.mark.parametrize("name", _cases(ZOO))
def test_channel(name):
    masked, small, inputs, before, reference = prune_and_shrink(name, "channel")
    assert _params(small) <= 0.75 * before
    assert max_rel_error(_outputs(masked, inputs), _outputs(small, inputs)) <= 1e-4
    # the interface keeps its shapes: classes, vocabulary, hidden width of base encoders
    for a, b in zip(flatten(reference), flatten(_outputs(small, inputs)), strict=True):
        if isinstance(a, torch.Tensor):
            assert a.shape == b.shape


@pytest.mark.parametrize("name", _cases(sorted(ATTENTION)))
def test_head(name):
    masked, small, inputs, before, _ = prune_and_shrink(name, "head")
    assert _params(small) < before
    assert max_rel_error(_outputs(masked, inputs), _outputs(small, inputs)) <= 1e-4
