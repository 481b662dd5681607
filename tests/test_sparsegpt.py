"""SparseGPT: OBS reconstruction. Known answers, invariants, damping and dead inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.reconstruct.sparsegpt import Segment, inverse_hessian_factor, sparsegpt

pytestmark = pytest.mark.filterwarnings("ignore:.*no recognisable block list")


def correlated_inputs(n: int = 512, d: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    mix = torch.randn(d, d, generator=g) * 0.5 + torch.eye(d)
    return base @ mix


def test_redundant_input_is_folded_into_its_twin():
    """x1 == x0: pruning w1 and adding it to w0 loses nothing; the OBS update finds that."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    x[:, 1] = x[:, 0]
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.2, 3.0, 2.0]]))
    pk.prune(lin, 0.25, criterion="sparsegpt", data=[x])
    w = lin.weight.detach()[0]
    assert (w[:2] == 0).sum() == 1  # one twin goes ...
    torch.testing.assert_close(
        w[:2].sum(), torch.tensor(1.2), atol=2e-2, rtol=0
    )  # ... into the other
    torch.testing.assert_close(w[2:], torch.tensor([3.0, 2.0]), atol=1e-2, rtol=0)


def test_single_weight_matches_the_obs_formula():
    """The first column pruned (every other column comes later, so all may compensate): the
    remaining weights move by -w_q / [H^-1]_qq * H^-1[:, q], the optimal brain surgeon step."""
    torch.manual_seed(0)
    x = correlated_inputs(d=4)
    H = 2 * x.t() @ x / x.shape[0]
    W = torch.tensor([[0.01, 0.5, -1.0, 2.0]])
    forced = torch.tensor([[True, False, False, False]])
    new, keep = sparsegpt(W, H, [Segment(0, 1, 1)], forced=forced, damp=0.0)
    Hinv = torch.linalg.inv(H)
    expect = W[0] - W[0, 0] / Hinv[0, 0] * Hinv[:, 0]
    torch.testing.assert_close(new[0], expect, atol=1e-5, rtol=1e-4)
    assert keep.tolist() == [[False, True, True, True]]


@pytest.mark.parametrize("granularity", ["unstructured", "2:4"])
def test_reconstruction_beats_wanda_and_magnitude(granularity):
    x = correlated_inputs()
    errors = {}
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        torch.manual_seed(1)
        lin = nn.Linear(32, 24, bias=False)
        dense = lin.weight.detach().clone()
        pk.prune(lin, 0.5, granularity=granularity, criterion=criterion, data=[x])
        errors[criterion] = (x @ (dense - lin.weight.detach()).t()).square().mean().item()
        assert abs(pk.report(lin).target_sparsity - 0.5) < 1e-9
        assert pk.report(lin).layers[0].nm_valid in (None, True)
    assert errors["sparsegpt"] < 0.85 * errors["wanda"] < errors["magnitude"]


def test_exact_sparsity_with_rows_sharing_a_hessian_and_odd_sizes():
    """q/k/v share a Hessian and are solved stacked; each layer still hits its own count."""
    torch.manual_seed(0)

    class QKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(300, 7), nn.Linear(300, 5), nn.Linear(300, 3)

        def forward(self, x):
            return self.q(x).sum() + self.k(x).sum() + self.v(x).sum()

    model = QKV()
    pk.prune(model, 0.3, criterion="sparsegpt", data=[torch.randn(64, 300)])
    for lin in (model.q, model.k, model.v):
        assert int((lin.weight == 0).sum()) == round(0.3 * lin.weight.numel())


def test_masks_only_shrink_and_stay_enforced():
    x = correlated_inputs()
    lin = nn.Linear(32, 16)
    pk.prune(lin, 0.3, criterion="magnitude")
    before = lin.weight != 0
    pk.prune(lin, 0.6, criterion="sparsegpt", data=[x])
    after = lin.weight != 0
    assert not (after & ~before).any()
    assert int((~after).sum()) == round(0.6 * lin.weight.numel())
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        lin(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert not ((lin.weight != 0) & ~after).any()


def test_dead_inputs_go_first_and_nothing_is_nan():
    x = correlated_inputs()
    x[:, :8] = 0  # eight inputs never fire
    lin = nn.Linear(32, 8, bias=False)
    pk.prune(lin, 0.25, criterion="sparsegpt", data=[x])
    assert torch.isfinite(lin.weight).all()
    assert (lin.weight[:, :8] == 0).all()


def test_non_positive_definite_hessian_is_damped_harder_with_a_warning():
    H = torch.diag(torch.tensor([1.0, -0.5, 2.0, 1.0]))
    with pytest.warns(UserWarning, match="not positive definite"):
        U = inverse_hessian_factor(H, 0.01, "toy")
    assert torch.isfinite(U).all()
    W = torch.randn(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new, _ = sparsegpt(W, H, [Segment(0, 3, 6)])
    assert torch.isfinite(new).all()
    with pytest.raises(pk.WeightError, match="NaN or inf"):
        inverse_hessian_factor(torch.full((2, 2), float("nan")))


def test_sparsegpt_rejects_block_granularity():
    lin = nn.Linear(8, 8)
    with pytest.raises(pk.ConfigError, match="unstructured and N:M"):
        pk.prune(lin, 0.5, granularity="block:2x2", criterion="sparsegpt", data=[torch.randn(4, 8)])


def test_factor_and_masks_do_not_depend_on_the_thread_count():
    """LAPACK's blocked Cholesky rounds differently on 1 and 2 threads at this size; the factor
    (and so every later update and mask) must not."""
    x = correlated_inputs(n=2048, d=640)
    H = 2 * x.t() @ x / x.shape[0]
    W = torch.randn(96, 640, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(
                (inverse_hessian_factor(H), *sparsegpt(W, H, [Segment(0, 96, 96 * 320)]))
            )
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.realmodel
def test_minilm_masks_are_identical_on_one_and_two_threads():
    import copy

    from prunekit.evaluate import CALIBRATION_MODULES, docstring_corpus, token_windows
    from prunekit.masks import get_mask
    from prunekit.pretrained import load_minilm
    from prunekit.targets import select_targets

    dense, tok = load_minilm()
    ids = token_windows(docstring_corpus(CALIBRATION_MODULES), tok, 128, 16)
    data = [{"input_ids": c, "attention_mask": torch.ones_like(c)} for c in ids.split(8)]
    before = torch.get_num_threads()
    masks = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model = copy.deepcopy(dense)
            pk.prune(model, 0.5, criterion="sparsegpt", include=r"encoder\..*", data=data)
            masks.append(
                [get_mask(t.module, t.param) for t in select_targets(model, r"encoder\..*")]
            )
    finally:
        torch.set_num_threads(before)
    assert len(masks[0]) == 36
    assert all(torch.equal(a, b) for a, b in zip(*masks, strict=True))
