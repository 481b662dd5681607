"""APoZ, mean-activation, OBD, regression and the slimming penalty: known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.calibrate import collect
from prunekit.criteria.apoz import apoz_channel_scores
from prunekit.criteria.base import ScoreContext
from prunekit.targets import select_targets
from prunekit.train.slimming import add_bn_l1_subgradient, bn_l1_penalty

pytestmark = pytest.mark.filterwarnings("ignore:.*no recognisable block list")


def neuron_net() -> nn.Sequential:
    """fc1 neuron j outputs x * (j - 1.5): neurons 0, 1 are negative (zero after ReLU) for x > 0."""
    fc1 = nn.Linear(1, 4, bias=False)
    with torch.no_grad():
        fc1.weight.copy_(torch.tensor([[-1.5], [-0.5], [0.5], [1.5]]))
    return nn.Sequential(fc1, nn.ReLU(), nn.Linear(4, 1))


POSITIVE = [torch.rand(32, 1) + 0.1]


def test_apoz_known_answer_and_pruning():
    model = neuron_net()
    targets = select_targets(model, include="0")
    stats = collect(model, targets, POSITIVE, {"outputs"})
    ctx = ScoreContext(model, stats=stats)
    assert apoz_channel_scores(targets[0], ctx).tolist() == [0.0, 0.0, 1.0, 1.0]
    pk.prune(model, 0.5, criterion="apoz", include="0", data=POSITIVE)
    assert (model[0].weight[:, 0] != 0).tolist() == [False, False, True, True]


def test_mean_activation_prunes_the_weakest_neurons():
    model = neuron_net()
    pk.prune(model, 0.25, criterion="mean-activation", include="0", data=POSITIVE)
    assert (model[0].weight[:, 0] != 0).tolist() == [False, True, True, True]


def test_apoz_follows_batchnorm_to_the_activation():
    """conv -> BN -> ReLU: the zero-rate is taken after the ReLU, per output channel."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 1, bias=False)
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([-100.0, 100.0, -100.0, 100.0]))  # channels 0, 2 always zero
    model = nn.Sequential(conv, bn, nn.ReLU())
    targets = select_targets(model)
    stats = collect(model, targets, [torch.randn(4, 2, 3, 3)], {"outputs"})
    scores = apoz_channel_scores(targets[0], ScoreContext(model, stats=stats))
    assert scores.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_functional_activation_falls_back_to_relu_with_a_warning():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return torch.relu(self.fc(x))

    with pytest.warns(UserWarning, match="ReLU"):
        pk.prune(Net(), 0.5, criterion="apoz", data=[torch.randn(8, 3)])


def test_obd_is_half_w_squared_times_squared_gradients():
    """loss = sum(W x) -> dL/dW_ij = x_j summed over the batch; F_ij = (sum x_j)^2."""
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.1, 3.0, 1.0]]))
    x = torch.tensor([[1.0, 0.1, 2.0]])
    pk.prune(lin, 0.5, criterion="obd", data=[x], loss_fn=lambda out, batch: out.sum())
    # saliency 0.5*w^2*x^2: row 0: .5, .005, 2; row 1: .005, .045, 2 -> prune the 3 lowest
    assert (lin.weight != 0).tolist() == [[True, False, True], [False, False, True]]
    assert lin.weight.requires_grad and lin.weight.grad is None


def test_obd_needs_a_loss():
    with pytest.raises(pk.ConfigError, match="needs a loss"):
        pk.prune(nn.Linear(3, 2), 0.5, criterion="obd", data=[torch.randn(4, 3)])


def test_regression_drops_a_redundant_channel_and_refits_exactly():
    """x2 = x0 + x1, so one of channels 0-2 can go with zero error once W is refit. Channel 3
    has the smallest weights but carries a large independent input: magnitude would drop it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    x[:, 2] = x[:, 0] + x[:, 1]
    x[:, 3] *= 30
    w = torch.tensor([[0.5, -0.3, 2.0, 0.1], [0.2, 0.4, -2.5, -0.1], [1.0, 1.0, 3.0, 0.1]])
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    pk.prune(lin, 0.25, criterion="regression", data=[x])
    dropped = (lin.weight == 0).all(0)
    assert int(dropped.sum()) == 1 and not dropped[3]
    torch.testing.assert_close(x @ lin.weight.detach().t(), x @ w.t(), atol=0.05, rtol=0.02)
    mag = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        mag.weight.copy_(w * torch.tensor([1.0, 1.0, 1.0, 0.0]))  # magnitude's channel choice
    assert (x @ mag.weight.detach().t() - x @ w.t()).abs().max() > 1.0


def test_regression_on_conv_input_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(8, 4, 6, 6)
    x[:, 3] = 0.01 * x[:, 3]  # a near-silent channel
    pk.prune(conv, 0.25, criterion="regression", data=[x])
    kept = (conv.weight != 0).any(dim=(0, 2, 3))
    assert kept.tolist() == [True, True, True, False]


def test_regression_refuses_n_m():
    with pytest.raises(pk.ConfigError, match="input channels"):
        pk.prune(
            nn.Linear(8, 4), granularity="2:4", criterion="regression", data=[torch.randn(4, 8)]
        )


def test_slimming_penalty_and_subgradient():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
    assert bn_l1_penalty(model, 0.1).item() == pytest.approx(0.35)
    add_bn_l1_subgradient(model, 0.1)
    assert model[1].weight.grad.tolist() == pytest.approx([0.1, -0.1, 0.1, 0.0])
    with pytest.raises(pk.ConfigError, match="no affine BatchNorm"):
        bn_l1_penalty(nn.Linear(2, 2))
