"""Property tests: exact sparsity and N:M validity over random shapes and sparsities."""

from __future__ import annotations

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from prunekit.granularity import parse_granularity, prune_lowest
from prunekit.granularity.block import Block
from prunekit.granularity.nm import NM


def scores_of(rows: int, cols: int, seed: int, ties: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    s = torch.rand(rows, cols, generator=gen)
    return (s * 4).round() if ties else s  # few distinct values: many ties


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    sparsity=st.floats(0, 0.999),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
@example(rows=34, cols=25, sparsity=0.99, seed=0, ties=False)  # 0.99 * 34 * 25 rounds to 841
def test_unstructured_exact(rows, cols, sparsity, seed, ties):
    keep = parse_granularity("unstructured").select(scores_of(rows, cols, seed, ties), sparsity)
    # the count of round(sparsity * numel), numel computed first as the library does
    assert int((~keep).sum()) == round(sparsity * (rows * cols))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 24),
    groups=st.integers(1, 12),
    n_m=st.tuples(st.integers(1, 7), st.integers(2, 8)).filter(lambda t: t[0] < t[1]),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_nm_every_group_holds(rows, groups, n_m, seed, ties):
    n, m = n_m
    gran = NM(n, m)
    scores = scores_of(rows, groups * m, seed, ties)
    keep = gran.select(scores, gran.fixed_sparsity)
    assert (keep.reshape(rows, groups, m).sum(-1) == n).all()
    assert gran.holds(scores * keep)
    # the kept weights are the N best of their group
    g = scores.reshape(rows, groups, m)
    k = keep.reshape(rows, groups, m)
    kept_min = g.masked_fill(~k, float("inf")).amin(-1)
    dropped_max = g.masked_fill(k, -float("inf")).amax(-1)
    assert (kept_min >= dropped_max).all()


@settings(max_examples=100, deadline=None)
@given(
    br=st.integers(1, 4),
    bc=st.integers(1, 4),
    nr=st.integers(1, 8),
    nc=st.integers(1, 8),
    sparsity=st.floats(0, 0.999),
    seed=st.integers(0, 2**16),
)
def test_block_exact_and_whole_blocks(br, bc, nr, nc, sparsity, seed):
    gran = Block(br, bc)
    keep = gran.select(scores_of(br * nr, bc * nc, seed, False), sparsity)
    tiles = keep.reshape(nr, br, nc, bc).permute(0, 2, 1, 3).reshape(nr, nc, -1)
    assert (tiles.all(-1) | ~tiles.any(-1)).all()  # each block all kept or all pruned
    assert int((~tiles.all(-1)).sum()) == round(sparsity * (nr * nc))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 200), k=st.integers(0, 200), seed=st.integers(0, 2**16))
def test_prune_lowest_drops_exactly_k_lowest(n, k, seed):
    k = min(k, n)
    s = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    keep = prune_lowest(s, k)
    assert int((~keep).sum()) == k
    if 0 < k < n:
        assert s[~keep].max() <= s[keep].min()
