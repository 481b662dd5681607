"""Block reconstruction: lowers the block output error against the dense block, masks exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.calibrate import find_blocks
from prunekit.masks import get_mask
from prunekit.reconstruct.block import BlockReconstruction
from prunekit.targets import select_targets
from tests.test_calibrate import Stack, batches


def prune(model, criterion, granularity="unstructured", sparsity=0.5, reconstruct=None, data=None):
    return pk.prune(
        model, sparsity if granularity == "unstructured" else None, granularity=granularity,
        criterion=criterion, reconstruct=reconstruct, data=data if data is not None else batches(6),
    )  # fmt: skip


@torch.no_grad()
def block_errors(dense: nn.Module, pruned: nn.Module, data) -> list[float]:
    """Relative error of each block's output, pruned vs dense, each fed the dense stream's
    input: computed directly, independently of the runner."""
    errs = []
    for x in data:
        h_dense = dense.embed(x)
        mask = torch.zeros(x.shape[1], x.shape[1])
        bias = torch.full((h_dense.shape[-1],), 0.1)
        for i, (bd, bp) in enumerate(zip(dense.layers, pruned.layers, strict=True)):
            yd = bd(h_dense, mask, bias=bias, scale=0.5)[0]
            yp = bp(h_dense, mask, bias=bias, scale=0.5)[0]
            if len(errs) <= i:
                errs.append([0.0, 0.0])
            errs[i][0] += float((yp - yd).detach().square().sum())
            errs[i][1] += float(yd.square().sum())
            h_dense = yd
    return [a / b for a, b in errs]


@torch.no_grad()
def final_error(dense, pruned, data) -> float:
    num = den = 0.0
    for x in data:
        y = dense(x)
        num += float((pruned(x) - y).detach().square().sum())
        den += float(y.square().sum())
    return num / den


def nonzero_pattern(model):
    return [t.weight.detach() != 0 for t in select_targets(model)]


@pytest.mark.parametrize(
    "criterion, granularity",
    [("magnitude", "unstructured"), ("wanda", "unstructured"), ("sparsegpt", "2:4")],
)
def test_reconstruction_lowers_block_and_model_error_and_keeps_masks(criterion, granularity):
    torch.manual_seed(0)
    dense = Stack(n=3, d=16)
    plain, tuned = copy.deepcopy(dense), copy.deepcopy(dense)
    prune(plain, criterion, granularity)
    prune(tuned, criterion, granularity, reconstruct=BlockReconstruction(steps=30, lr=3e-3))
    held_out = batches(4, seed=1)
    # reconstruction tunes kept weights, it never chooses: block 0's masks (and, for a
    # data-free criterion, every mask) are those of the plain prune
    for a, b in zip(select_targets(plain), select_targets(tuned), strict=True):
        mask = get_mask(b.module, b.param)
        if criterion == "magnitude" or a.qualname.startswith("layers.0."):
            assert torch.equal(get_mask(a.module, a.param), mask)
        assert int((b.weight[~mask] != 0).sum()) == 0  # pruned weights exactly zero
    report = pk.report(tuned)
    assert abs(report.target_sparsity - 0.5) < 1e-9
    assert all(layer.nm_valid in (None, True) for layer in report.layers)
    calib = batches(6)
    e_plain, e_tuned = block_errors(dense, plain, calib), block_errors(dense, tuned, calib)
    assert e_tuned[0] < 0.8 * e_plain[0]  # block 0 sees identical inputs in both
    assert final_error(dense, tuned, held_out) < final_error(dense, plain, held_out)


def test_reconstruction_is_deterministic_and_seeded():
    torch.manual_seed(0)
    dense = Stack()
    runs = []
    for seed in (0, 0, 1):
        model = copy.deepcopy(dense)
        prune(model, "wanda", reconstruct=BlockReconstruction(steps=20, lr=1e-3, seed=seed))
        runs.append([t.weight.detach().clone() for t in select_targets(model)])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_stages_tune_only_the_named_sub_blocks():
    torch.manual_seed(0)
    dense = Stack()
    plain, staged = copy.deepcopy(dense), copy.deepcopy(dense)
    prune(plain, "wanda")
    prune(staged, "wanda", reconstruct=BlockReconstruction(steps=30, lr=3e-3, stages=("up|down",)))
    first = find_blocks(staged, select_targets(staged))[1][0]  # later blocks see another stream
    for name in ("q", "k", "v", "o"):  # attention untouched
        assert torch.equal(getattr(plain.layers[0], name).weight, getattr(first, name).weight)
    assert not torch.equal(plain.layers[0].up.weight, first.up.weight)


def test_a_useless_tuning_is_undone():
    """A learning rate far too high makes the block worse; the stage restores its weights."""
    torch.manual_seed(0)
    dense = Stack()
    plain, wild = copy.deepcopy(dense), copy.deepcopy(dense)
    prune(plain, "wanda")
    prune(wild, "wanda", reconstruct=BlockReconstruction(steps=5, lr=0.9))
    for a, b in zip(select_targets(plain), select_targets(wild), strict=True):
        assert torch.equal(a.weight, b.weight)


@pytest.mark.parametrize(
    "kwargs, words",
    [({"steps": 0}, "positive integer"), ({"lr": 2.0}, "lr"), ({"stages": ("(",)}, "regex")],
)
def test_bad_options(kwargs, words):
    with pytest.raises(pk.ConfigError, match=words):
        BlockReconstruction(**kwargs)


def test_stage_hands_back_the_tuned_blocks_outputs_and_guards_on_the_first_batch():
    """Run the stage directly on one masked block: its outputs are the tuned block's own outputs
    (recomputed here), its return value the first batch's relative error (recomputed here), and
    a tuning that makes the first batch worse is undone with no outputs handed back."""
    from prunekit.calibrate.blocks import BlockCaller, BlockInputs, BlockStage
    from prunekit.masks import shrink_mask
    from prunekit.reconstruct.block import reconstruct_block

    torch.manual_seed(0)
    model = Stack(n=2, d=16)
    dense_block = copy.deepcopy(model.layers[0])
    mask = torch.zeros(7, 7)
    bias = torch.full((16,), 0.1)
    hs = [model.embed(ids).detach() for ids in batches(4)]
    inputs = [BlockInputs((h, mask), {"bias": bias, "scale": 0.5}, 0) for h in hs]
    with torch.no_grad():
        dense = [dense_block(h, mask, bias=bias, scale=0.5)[0] for h in hs]

    def relerr(block, i):
        with torch.no_grad():
            y = block(hs[i], mask, bias=bias, scale=0.5)[0]
        return float((y - dense[i]).square().sum() / dense[i].square().sum())

    for lr, undone in ((3e-3, False), (0.9, True)):
        block = copy.deepcopy(dense_block)
        targets = select_targets(block)
        for t in targets:
            w = t.weight.detach().abs()
            shrink_mask(t.module, t.param, w > w.median())
        masked = [t.weight.detach().clone() for t in targets]
        before = [relerr(block, i) for i in range(4)]
        stage = BlockStage(block, targets, inputs, dense, BlockCaller(torch.device("cpu"), False))
        err = reconstruct_block(stage, BlockReconstruction(steps=30, lr=lr))
        assert err == pytest.approx(relerr(block, 0), rel=1e-5)
        for t in targets:
            assert int((t.weight[~get_mask(t.module, t.param)] != 0).sum()) == 0
        if undone:
            assert stage.outputs is None and err == pytest.approx(before[0], rel=1e-5)
            assert all(torch.equal(a, t.weight) for a, t in zip(masked, targets, strict=True))
        else:
            assert err < before[0] and sum(map(relerr, [block] * 4, range(4))) < sum(before)
            with torch.no_grad():
                for h, out in zip(hs, stage.outputs, strict=True):
                    assert torch.allclose(out, block(h, mask, bias=bias, scale=0.5)[0])
