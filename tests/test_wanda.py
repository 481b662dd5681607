"""Wanda: |W| · ‖X_j‖₂, compared within each output row. Known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk

pytestmark = pytest.mark.filterwarnings("ignore:.*no recognisable block list")


def layer(weight: list[list[float]]) -> nn.Linear:
    w = torch.tensor(weight)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


# input columns with norms 1, 10, 0.1, 1: column 1 matters most, column 2 least
X = torch.tensor([[1.0, 10.0, 0.1, -1.0], [-1.0, -10.0, 0.1, 1.0]])


def test_wanda_scores_are_weight_times_input_norm():
    lin = layer([[1.0, 0.2, 5.0, 0.5], [4.0, 1.0, 3.0, 2.0]])
    pk.prune(lin, 0.5, criterion="wanda", data=[X])
    # scores row 0: 1, 2, 0.5, 0.5 -> keep columns 0, 1; row 1: 4, 10, 0.3, 2 -> keep 0, 1
    expect = torch.tensor([[1.0, 0.2, 0.0, 0.0], [4.0, 1.0, 0.0, 0.0]])
    assert torch.equal(lin.weight.detach(), expect)


def test_wanda_differs_from_magnitude_where_inputs_differ():
    lin = layer([[1.0, 0.2, 5.0, 0.5]])
    mag = layer([[1.0, 0.2, 5.0, 0.5]])
    pk.prune(lin, 0.5, criterion="wanda", data=[X])
    pk.prune(mag, 0.5, criterion="magnitude")
    assert lin.weight[0, 1] != 0 and mag.weight[0, 1] == 0  # small weight, huge input


def test_wanda_compares_within_each_row():
    """Row 1's scores are all larger than row 0's; each row still loses exactly half."""
    lin = layer([[1.0, 2.0, 3.0, 4.0], [100.0, 200.0, 300.0, 400.0]])
    pk.prune(lin, 0.5, criterion="wanda", data=[torch.ones(3, 4)])
    assert (lin.weight != 0).sum(1).tolist() == [2, 2]


def test_wanda_two_four():
    lin = layer([[1.0, 0.2, 5.0, 0.5, 1.0, 1.0, 1.0, 1.0]])
    x = torch.cat([X, torch.tensor([[1.0, 2.0, 3.0, 4.0]]).expand(2, 4)], dim=1)
    pk.prune(lin, granularity="2:4", criterion="wanda", data=[x])
    # group 1 scores 1, 2, 0.5, 0.5 -> keep 0, 1; group 2 scores 1, 2, 3, 4 -> keep 6, 7
    assert (lin.weight[0] != 0).tolist() == [True, True, False, False, False, False, True, True]
    assert pk.report(lin).layers[0].nm_valid


def test_wanda_on_conv_uses_unfolded_patch_norms():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3)
    with torch.no_grad():
        conv.weight.copy_(conv.weight.sign() * conv.weight.abs().clamp_min(0.01))
    x = torch.randn(4, 4, 6, 6)
    x[:, 0] *= 1e4  # input channel 0 dominates every kernel position
    pk.prune(conv, 0.75, criterion="wanda", data=[x])
    kept = conv.weight.detach() != 0  # [out, in, kh, kw]
    assert kept[:, 0].all() and not kept[:, 1:].any()


def test_per_row_counts_add_up_to_the_exact_total():
    """0.3 of a 7x5 layer is 10.5 -> 10 weights; rows lose 1 or 2 (not 7 * round(1.5) = 14)."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 7)
    pk.prune(lin, 0.3, criterion="wanda", data=[torch.randn(8, 5)])
    pruned = (lin.weight == 0).sum(1)
    assert int(pruned.sum()) == 10 and set(pruned.tolist()) <= {1, 2}
