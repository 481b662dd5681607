"""Contract tests of the structure registries: every rule, resizer and head adapter runs its own
examples through prune -> shrink, and the shrunk model computes what the masked one did."""

from __future__ import annotations

import warnings

import pytest
import torch

import prunekit as pk
from prunekit.outputs import max_rel_error
from prunekit.structure.graph import call_model, trace
from prunekit.structure.heads import HEAD_ADAPTERS, adapter_for
from prunekit.structure.propagate import RULES, rule_for
from prunekit.structure.resize import RESIZERS


def _cases(registry):
    return [
        pytest.param(name, i, id=f"{name}-{i}")
        for name in registry.names()
        for i in range(len(registry.examples(name)))
    ]


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _prune_shrink(example, granularity):
    model, x = example.build().eval(), example.inputs()
    before = _params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.prune(model, 0.5, granularity=granularity, example_inputs=x)
        small = pk.shrink(model, x)
    with torch.no_grad():
        err = max_rel_error(call_model(model, x), call_model(small, x))
    assert err <= 1e-4
    return model, small, before


@pytest.mark.parametrize("registry", [RULES, RESIZERS, HEAD_ADAPTERS], ids=lambda r: r.kind)
def test_every_entry_brings_examples(registry):
    assert registry.names()
    assert all(registry.examples(n) for n in registry.names())


def test_duplicate_names_raise():
    with pytest.raises(RuntimeError, match="twice"):
        RESIZERS.register("Linear", examples=[None])(lambda m: None)


@pytest.mark.parametrize(("name", "i"), _cases(RULES))
def test_rule_examples(name, i):
    example = RULES.examples(name)[i]
    model, x = example.build().eval(), example.inputs()
    graph = trace(model, x)
    assert any(rule_for(c.name) is RULES.get(name) for c in graph.calls)  # the rule really runs
    _, small, before = _prune_shrink(example, "channel")
    assert (_params(small) < before) == example.shrinks


@pytest.mark.parametrize(("name", "i"), _cases(RESIZERS))
def test_resizer_examples(name, i):
    pytest.importorskip("transformers")
    example = RESIZERS.examples(name)[i]
    _, small, before = _prune_shrink(example, "channel")
    assert _params(small) < before
    resized = [m for m in small.modules() if name in {c.__name__ for c in type(m).__mro__}]
    assert resized


@pytest.mark.parametrize(("name", "i"), _cases(HEAD_ADAPTERS))
def test_head_adapter_examples(name, i):
    pytest.importorskip("transformers")
    example = HEAD_ADAPTERS.examples(name)[i]
    served = [m for m in example.build().modules() if adapter_for(m) is HEAD_ADAPTERS.get(name)]
    assert served
    _, small, before = _prune_shrink(example, "head")
    assert _params(small) < before
