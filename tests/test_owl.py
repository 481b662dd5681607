"""OWL: outlier-weighted layerwise sparsity."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit import OWL
from tests.test_calibrate import Stack, batches


def test_blocks_with_more_outliers_keep_more_weights():
    """Block 0 has 10% outliers (> 5x mean), block 1 none: sparsities 0.5 -/+ lambda."""
    plain = torch.ones(10, 10)
    spiky = torch.ones(10, 10)
    spiky[0] = 100.0  # 10 of 100 scores far above 5x the mean
    scores = {
        "layers.0.q.weight": spiky,
        "layers.0.k.weight": spiky.clone(),
        "layers.1.q.weight": plain,
        "layers.1.k.weight": plain.clone(),
    }
    budget = OWL().layer_sparsities(scores, 0.5)
    assert budget["layers.0.q.weight"] == budget["layers.0.k.weight"] == pytest.approx(0.42)
    assert budget["layers.1.q.weight"] == pytest.approx(0.58)
    pruned = sum(round(budget[n] * s.numel()) for n, s in scores.items())
    assert pruned == 200  # exact overall


def test_owl_total_is_exact_with_unequal_layers():
    g = torch.Generator().manual_seed(0)
    scores = {
        f"layers.{i}.fc{j}.weight": torch.randn(7 + j, 13, generator=g).abs() ** (1 + i)
        for i in range(3)
        for j in range(2)
    }
    budget = OWL().layer_sparsities(scores, 0.37)
    pruned = sum(round(budget[n] * s.numel()) for n, s in scores.items())
    assert pruned == round(0.37 * sum(s.numel() for s in scores.values()))
    assert len({round(v, 6) for v in budget.values()}) > 1


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_owl_runs_with_wanda_and_sparsegpt(criterion):
    torch.manual_seed(0)
    model = Stack()
    with torch.no_grad():
        model.layers[0].q.weight[:, 0] *= 50  # an outlier feature in block 0
    pk.prune(model, 0.5, criterion=criterion, scope="owl", data=batches(), exclude="head")
    report = pk.report(model)
    assert report.target_sparsity == pytest.approx(0.5, abs=1e-9)
    by_name = {row.name: row.sparsity for row in report.layers}
    assert by_name["layers.0.q.weight"] < 0.5 < by_name["layers.1.q.weight"]


def test_owl_refuses_n_m():
    with pytest.raises(pk.ConfigError, match="owl"):
        pk.prune(Stack(), granularity="2:4", criterion="wanda", scope="owl", data=batches())
