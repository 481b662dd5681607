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
    "shape", [(3000, 700), (700, 3000), (64, 32, 3, 3), (5,), (1, 2_000_000), (40_000, 30)]
)
@pytest.mark.parametrize("fn", [torch.abs, torch.square])
def test_slice_sums_match_the_full_reduction(shape, fn):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for dim in range(w.dim()):
        rest = [d for d in range(w.dim()) if d != dim]
        full = fn(w).sum(rest) if rest else fn(w)
        assert torch.allclose(slice_sums(w, dim, fn), full, rtol=1e-5, atol=1e-3)


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
