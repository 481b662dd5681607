"""Mask refinement: swaps lower the layer's reconstruction error, counts stay exact."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import prunekit as pk
from prunekit.masks import get_mask
from prunekit.reconstruct.refine import layer_error, refine_rows
from prunekit.targets import select_targets
from tests.test_calibrate import Stack, batches
from tests.test_sparsegpt import correlated_inputs


def wanda_keep(w: torch.Tensor, x: torch.Tensor, keep_per_row: int) -> torch.Tensor:
    score = w.abs() * x.norm(dim=0)
    keep = torch.zeros_like(w, dtype=torch.bool)
    keep.scatter_(1, score.topk(keep_per_row, dim=1).indices, True)
    return keep


def test_refined_rows_lower_the_true_output_error_with_exact_counts():
    x = correlated_inputs(n=400, d=24)
    w = torch.randn(16, 24, generator=torch.Generator().manual_seed(1))
    keep = wanda_keep(w, x, 12)
    new_w, new_keep = refine_rows(w, w * keep, keep, x.t() @ x, damp=0.0)
    # the error as the layer's outputs see it, computed directly
    before = (x @ (w - w * keep).t()).square().sum()
    after = (x @ (w - new_w).t()).square().sum()
    assert after < 0.9 * before
    torch.testing.assert_close(layer_error(w, new_w, x.t() @ x), after.double(), rtol=1e-4, atol=0)
    assert torch.equal(new_keep.sum(1), keep.sum(1))  # exact per-row counts
    assert not (new_keep != keep).all()  # some swaps, not a new mask from scratch
    assert int((new_w[~new_keep] != 0).sum()) == 0


def test_refinement_never_beats_the_best_mask_of_a_tiny_row():
    """Against brute force on a 6-wide row: refined error lies between the optimum (every
    3-of-6 mask with least-squares kept weights) and the starting error."""
    x = correlated_inputs(n=200, d=6, seed=4)
    w = torch.randn(1, 6, generator=torch.Generator().manual_seed(5))
    keep = wanda_keep(w, x, 3)
    new_w, new_keep = refine_rows(w, w * keep, keep, x.t() @ x, damp=0.0)
    y = x @ w.t()
    best = min(
        float((x[:, list(s)] @ torch.linalg.lstsq(x[:, list(s)], y).solution - y).square().sum())
        for s in itertools.combinations(range(6), 3)
    )
    err = float((x @ (w - new_w).t()).square().sum())
    start = float((x @ (w - w * keep).t()).square().sum())
    assert best - 1e-4 <= err <= start
    assert int(new_keep.sum()) == 3


def test_nm_groups_and_frozen_weights_hold():
    x = correlated_inputs(n=300, d=32, seed=2)
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    score = (w.abs() * x.norm(dim=0)).view(8, 8, 4)  # [rows, groups, 4]
    keep = torch.zeros_like(score, dtype=torch.bool).scatter_(2, score.topk(2, 2).indices, True)
    keep = keep.view(8, 32)
    frozen = ~keep & (torch.arange(32) < 8)  # the first two groups' pruned weights stay pruned
    new_w, new_keep = refine_rows(w, w * keep, keep, x.t() @ x, m=4, frozen=frozen)
    assert (new_keep.view(8, 8, 4).sum(2) == 2).all()  # 2:4 in every group
    assert not (new_keep & frozen).any()
    assert layer_error(w, new_w, x.t() @ x) < layer_error(w, w * keep, x.t() @ x)


@pytest.mark.parametrize(
    "criterion, granularity", [("wanda", "2:4"), ("sparsegpt", "unstructured")]
)
def test_refine_in_the_pipeline_keeps_sparsity_and_lowers_first_block_error(criterion, granularity):
    torch.manual_seed(0)
    dense = Stack()
    data = batches(6)
    models = {}
    for refine in (False, True):
        model = copy.deepcopy(dense)
        sparsity = 0.5 if granularity == "unstructured" else None
        pk.prune(
            model, sparsity, granularity=granularity, criterion=criterion, refine=refine, data=data
        )
        models[refine] = model
        report = pk.report(model)
        assert abs(report.target_sparsity - 0.5) < 1e-9
        assert all(layer.nm_valid in (None, True) for layer in report.layers)
        for t in select_targets(model):
            mask = get_mask(t.module, t.param)
            assert int((t.weight[~mask] != 0).sum()) == 0
    # block 0's q sees the same inputs in both: its output error over the calibration data,
    # which refinement lowers, must not grow
    x = torch.cat([dense.embed(b) for b in data]).detach()
    ref = dense.layers[0].q(x)
    err = [float((m.layers[0].q(x) - ref).detach().square().sum()) for m in (models[0], models[1])]
    assert err[1] < err[0]


def test_refit_approaches_the_exact_least_squares_weights_of_each_row():
    """Against a direct solve per row (the kept columns' normal equations): the refit's error
    lies between that optimum and the starting error, close to the optimum; the mask holds."""
    from prunekit.reconstruct.refine import refit_rows

    x = correlated_inputs(n=400, d=24, seed=3)
    w = torch.randn(8, 24, generator=torch.Generator().manual_seed(6))
    keep = wanda_keep(w, x, 12)
    h = (x.t() @ x).double()
    damped = h + 0.01 * h.diagonal().mean() * torch.eye(24, dtype=torch.float64)
    new = refit_rows(w, w * keep, keep, x.t() @ x, iters=30)
    assert int((new[~keep] != 0).sum()) == 0
    for r in range(8):
        s = keep[r]
        best = torch.zeros(24, dtype=torch.float64)
        best[s] = torch.linalg.solve(damped[s][:, s], (damped @ w[r].double())[s])

        def err(v, r=r):
            d = w[r].double() - v.double()
            return float(d @ damped @ d)

        start = err(w[r] * keep[r])
        assert err(best) - 1e-6 <= err(new[r]) <= start
        assert err(new[r]) - err(best) <= 0.02 * (start - err(best))
