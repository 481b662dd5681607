"""Mask invariants, for every registered granularity and data-free criterion, on every layer type.

* the achieved sparsity equals the requested one (per layer, or overall for global scope);
* every N:M group holds;
* masks only shrink;
* the same seed gives the same masks.
"""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.granularity import parse_granularity
from prunekit.granularity.nm import NM
from prunekit.masks import MaskState
from prunekit.targets import select_targets
from tests.helpers import DATA_FREE_CRITERIA, GRANULARITY_SPECS, MODELS, make


def requested(spec: str, sparsity: float) -> float:
    fixed = parse_granularity(spec).fixed_sparsity
    return sparsity if fixed is None else fixed


def unit_tolerance(spec: str, numel: int) -> float:
    """Half a unit: rounding to whole units is the only allowed deviation."""
    return parse_granularity(spec).unit_size / numel / 2 + 1e-12


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("spec", GRANULARITY_SPECS, ids=str)
@pytest.mark.parametrize("criterion", DATA_FREE_CRITERIA)
def test_layer_scope_exact_sparsity_and_nm(model_name, spec, criterion):
    model, _ = make(model_name)
    sparsity = None if isinstance(parse_granularity(spec), NM) else 0.6
    pk.prune(model, sparsity, granularity=spec, criterion=criterion)
    want = requested(spec, 0.6)
    for t in select_targets(model):
        w = t.weight
        achieved = 1 - int(torch.count_nonzero(w)) / w.numel()
        assert abs(achieved - want) <= unit_tolerance(spec, w.numel()), (t.qualname, achieved)
        gran = parse_granularity(spec)
        if isinstance(gran, NM):
            groups = (t.matrix() != 0).reshape(w.shape[0], -1, gran.m).sum(-1)
            assert (groups == gran.n).all()  # random weights have no exact zeros: exactly N
            assert gran.holds(t.matrix())


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("spec", [g for g in GRANULARITY_SPECS if not g.fixed_sparsity], ids=str)
def test_global_scope_exact_overall(model_name, spec):
    model, _ = make(model_name)
    pk.prune(model, 0.7, granularity=spec, scope="global")
    weights = [t.weight for t in select_targets(model)]
    total = sum(w.numel() for w in weights)
    achieved = 1 - sum(int(torch.count_nonzero(w)) for w in weights) / total
    assert abs(achieved - 0.7) <= unit_tolerance(spec, total)
    per_layer = [1 - int(torch.count_nonzero(w)) / w.numel() for w in weights]
    assert max(per_layer) - min(per_layer) > 0.01  # one threshold, not a uniform split


def test_global_magnitude_uses_one_threshold():
    model, _ = make("mlp")
    pk.prune(model, 0.5, scope="global")
    kept = torch.cat([t.weight.abs().flatten() for t in select_targets(model)])
    survivors, pruned = kept[kept != 0], kept == 0
    original, _ = make("mlp")
    orig = torch.cat([t.weight.abs().flatten() for t in select_targets(original)])
    assert survivors.min() >= orig[pruned].max()


@pytest.mark.parametrize("spec", GRANULARITY_SPECS, ids=str)
@pytest.mark.parametrize("criterion", DATA_FREE_CRITERIA)
def test_masks_only_shrink(spec, criterion):
    model, _ = make("cnn")
    first = 0.3 if parse_granularity(spec).fixed_sparsity is None else None
    pk.prune(model, first, granularity=spec, criterion=criterion)
    before = MaskState(model).state_dict()
    # a second, different pruning pass: random scores would revive weights if masks could grow
    pk.prune(model, 0.9, granularity="unstructured", criterion="random", seed=7)
    after = MaskState(model).state_dict()
    assert before.keys() == after.keys()
    for name in before:
        assert not (after[name] & ~before[name]).any(), name
        assert after[name].sum() < before[name].sum()


def test_lower_sparsity_never_regrows():
    model, _ = make("mlp")
    pk.prune(model, 0.8)
    before = MaskState(model).state_dict()
    pk.prune(model, 0.3, criterion="random")
    after = MaskState(model).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("spec", GRANULARITY_SPECS, ids=str)
def test_same_seed_same_masks(spec):
    masks = []
    for seed in (3, 3, 4):
        model, _ = make("cnn")
        sparsity = None if parse_granularity(spec).fixed_sparsity else 0.5
        pk.prune(model, sparsity, granularity=spec, criterion="random", seed=seed)
        masks.append(MaskState(model).state_dict())
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert any(not torch.equal(masks[0][k], masks[2][k]) for k in masks[0])


def test_ties_break_deterministically():
    model, _ = make("mlp")
    with torch.no_grad():
        for t in select_targets(model):
            t.weight.fill_(1.0)  # every score ties
    pk.prune(model, 0.5)
    first = MaskState(model).state_dict()
    model2, _ = make("mlp")
    with torch.no_grad():
        for t in select_targets(model2):
            t.weight.fill_(1.0)
    pk.prune(model2, 0.5)
    assert all(torch.equal(first[k], v) for k, v in MaskState(model2).state_dict().items())
    assert all(abs(1 - m.float().mean() - 0.5) < 1e-9 for m in first.values())
