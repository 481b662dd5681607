"""Magnitude slice scores by blocks and masks multiplied by blocks give what the plain full-tensor
computations give."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria.magnitude import L2, Magnitude, slice_sums
from prunekit.masks import mul_mask_, shrink_mask

from .zoo import INPUTS, ZOO


@pytest.mark.parametrize(
    "shape",
    [
        (3000, 700),
        (700, 3000),
        (64, 32, 3, 3),
        (64, 32, 1, 1),
        (6, 5, 4),
        (5,),
        (1, 2_000_000),
        (40_000, 30),
    ],
)
@pytest.mark.parametrize("fn", [torch.abs, torch.square])
def test_slice_sums_match_the_full_reduction(shape, fn):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for dims in (range(w.dim()), reversed(range(w.dim())), [0, 0, 1, 1]):  # from one pass or two
        for dim in dims:
            dim = dim % w.dim()
            rest = [d for d in range(w.dim()) if d != dim]
            full = fn(w).sum(rest) if rest else fn(w)
            got = slice_sums(w, dim, fn, fn.__name__)
            assert torch.allclose(got, full, rtol=1e-5, atol=1e-3)


def test_slice_sums_left_over_from_a_pass_are_dropped_once_the_weight_changes():
    w = nn.Conv2d(8, 6, 3).weight
    col = w.detach().abs().sum((0, 2, 3))
    slice_sums(w, 0, torch.abs, "abs")  # the columns are kept for the next call
    with torch.no_grad():
        w[:, 2] = 0.0  # written in place (the way a mask zeroes it)
    assert float(slice_sums(w, 1, torch.abs, "abs")[2]) == 0.0 != float(col[2])
    slice_sums(w, 0, torch.abs, "abs")
    square = slice_sums(w, 1, torch.square, "square")  # another function: its own sums
    assert torch.allclose(square, w.detach().square().sum((0, 2, 3)))


@pytest.mark.parametrize("criterion", [Magnitude, L2])
def test_fast_slice_scores_choose_the_masks_of_full_scores(criterion, monkeypatch):
    def masks() -> dict:
        model, x = ZOO["cnn"](), INPUTS["cnn"]()
        pk.prune(model, 0.5, granularity="channel", criterion=criterion(), example_inputs=x)
        return pk.MaskState(model).masks

    fast = masks()
    monkeypatch.setattr(criterion, "slice_scores", lambda self, target, ctx, dim: None)
    full = masks()  # the generic path: scores() reduced over the full tensor
    assert fast.keys() == full.keys() and fast
    for k in fast:
        assert torch.equal(fast[k], full[k]), k


@pytest.mark.parametrize("shape", [(5000, 300), (300, 5000), (2, 3), (3_000_000,)])
def test_mul_mask_by_blocks_is_the_plain_product(shape):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) > 0.5
    expected = w * mask
    assert torch.equal(mul_mask_(w, mask), expected)


def test_a_large_armed_mask_zeroes_its_weight():
    emb = nn.Embedding(40_000, 64)
    keep = torch.ones(40_000, 64, dtype=torch.bool)
    keep[:, ::2] = False
    shrink_mask(emb, "weight", keep)
    assert torch.count_nonzero(emb.weight[:, ::2]) == 0
    assert torch.count_nonzero(emb.weight[:, 1::2]) == 40_000 * 32
