"""Pruned weights stay exactly zero through training, copies and compilation."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.masks import MaskState
from prunekit.targets import select_targets
from tests.helpers import GRANULARITY_SPECS, make

OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.05),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
}


def pruned_zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    return {q: ~m for q, m in MaskState(model).masks.items()}


def train_steps(model, x, opt, steps=5, pruner=None):
    for _ in range(steps):
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if pruner is not None:
            pruner.step()


def assert_zero(model, zeros):
    params = dict(model.named_parameters())
    for q, z in zeros.items():
        assert z.any()
        assert (params[q][z] == 0).all(), q


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("spec", GRANULARITY_SPECS, ids=str)
def test_zero_through_training_with_fresh_optimizer(opt_name, spec, model_and_input):
    model, x = model_and_input
    pk.prune(model, None if spec.fixed_sparsity else 0.5, granularity=spec)
    zeros = pruned_zeros(model)
    before = {q: p.detach().clone() for q, p in model.named_parameters()}
    train_steps(model, x, OPTIMIZERS[opt_name](model.parameters()))
    assert_zero(model, zeros)
    moved = [q for q, p in model.named_parameters() if not torch.equal(p, before[q])]
    assert moved  # training really happened


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_zero_with_optimizer_created_before_pruning(opt_name):
    model, x = make("cnn")
    opt = OPTIMIZERS[opt_name](model.parameters())
    train_steps(model, x, opt, steps=3)  # momentum buffers now hold every weight
    config = pk.PruneConfig(sparsity=0.8, schedule=pk.Iterative(steps=3, every=2))
    pruner = pk.Pruner(model, config)
    for _ in range(8):
        train_steps(model, x, opt, steps=1, pruner=pruner)
        assert_zero(model, pruned_zeros(model))
    assert abs(pruner.sparsity - 0.8) < 1e-3


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_zero_when_a_parameter_masked_while_frozen_is_unfrozen(opt_name):
    model, x = make("mlp")
    frozen = [p for p in model.parameters() if p.dim() == 2]
    for p in frozen:
        p.requires_grad_(False)  # a frozen weight takes no gradient hook when it is masked
    pk.prune(model, 0.5)
    for p in frozen:
        p.requires_grad_(True)
    zeros = pruned_zeros(model)
    before = {q: p.detach().clone() for q, p in model.named_parameters()}
    train_steps(model, x, OPTIMIZERS[opt_name](model.parameters()))
    assert_zero(model, zeros)
    assert any(not torch.equal(p, before[q]) for q, p in model.named_parameters() if p.dim() == 2)


def test_grads_of_pruned_weights_are_zero():
    model, x = make("mlp")
    pk.prune(model, 0.5)
    model(x).sum().backward()
    params = dict(model.named_parameters())
    for q, z in pruned_zeros(model).items():
        assert (params[q].grad[z] == 0).all()
        assert (params[q].grad[~z] != 0).any()


def test_state_dict_keys_unchanged_and_finalize_loads_into_plain_model():
    model, x = make("cnn")
    keys = list(model.state_dict())
    pk.prune(model, 0.7)
    assert list(model.state_dict()) == keys
    out = model(x)
    pk.finalize(model)
    assert not MaskState(model).masks
    plain, _ = make("cnn", seed=1)
    plain.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(plain(x), out, rtol=0, atol=0)
    assert abs(pk.report(plain).target_sparsity - 0.7) < 1e-3


def test_finalize_stops_enforcement():
    model, x = make("mlp")
    pk.prune(model, 0.5)
    pk.finalize(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_steps(model, x, opt, steps=2)
    assert pk.report(model).target_sparsity < 0.5  # weights may regrow: masks are gone


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_outputs_and_stay_pruned(how):
    model, x = make("cnn")
    pk.prune(model, 0.75)
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    zeros = pruned_zeros(clone)
    assert zeros.keys() == pruned_zeros(model).keys()
    train_steps(clone, x, torch.optim.Adam(clone.parameters(), lr=0.1))
    assert_zero(clone, zeros)
    assert_zero(model, pruned_zeros(model))  # the original is untouched and still pruned


def test_torch_compile_keeps_outputs_and_masks():
    model, x = make("mlp")
    pk.prune(model, 0.6)
    eager = model(x)
    compiled = torch.compile(model, backend="aot_eager")  # dynamo + AOTAutograd
    torch.testing.assert_close(compiled(x), eager, rtol=1e-6, atol=1e-6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        compiled(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert_zero(model, pruned_zeros(model))


def test_pruner_state_dict_resumes():
    config = pk.PruneConfig(sparsity=0.9, schedule=pk.Cubic(start=0, end=10, every=2))
    model, _ = make("mlp")
    pruner = pk.Pruner(model, config)
    for _ in range(5):
        pruner.step()
    state = pruner.state_dict()
    resumed_model, _ = make("mlp")
    resumed_model.load_state_dict(model.state_dict())
    resumed = pk.Pruner(resumed_model, config)
    resumed.load_state_dict(state)
    for _ in range(8):
        pruner.step()
        resumed.step()
    assert MaskState(model).state_dict().keys() == MaskState(resumed_model).state_dict().keys()
    for k, v in MaskState(model).state_dict().items():
        assert torch.equal(v, MaskState(resumed_model).state_dict()[k])
    assert abs(resumed.sparsity - 0.9) < 1e-3


def test_pruner_load_state_rejects_mismatch():
    model, _ = make("mlp")
    pruner = pk.Pruner(model, pk.PruneConfig(sparsity=0.5))
    with pytest.raises(pk.ConfigError, match="shape"):
        pruner.load_state_dict({"step": 1, "masks": {"0.weight": torch.ones(3, 3, dtype=bool)}})
    with pytest.raises(pk.ConfigError, match="names no parameter"):
        pruner.load_state_dict({"step": 1, "masks": {"9.weight": torch.ones(3, dtype=bool)}})
    assert not MaskState(model).masks


def test_masks_follow_to_and_stay_out_of_state_dict():
    model, _ = make("mlp")
    pk.prune(model, 0.5)
    model.to(torch.float64)
    assert all(m.dtype == torch.bool for m in MaskState(model).masks.values())
    assert not any(k.endswith("_pk_mask") for k in model.state_dict())
    assert [t.qualname for t in select_targets(model)] == list(MaskState(model).masks)


class NoisyOptimizer(torch.optim.SGD):
    """A non-elementwise update: it moves every weight, zero gradient or not."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(0.01)


def test_zero_with_non_elementwise_optimizer():
    model, x = make("mlp")
    pk.prune(model, 0.5)
    zeros = pruned_zeros(model)
    train_steps(model, x, NoisyOptimizer(model.parameters(), lr=0.1), steps=4)
    assert_zero(model, zeros)


def test_elementwise_optimizer_state_is_cleaned_at_pruned_entries():
    model, x = make("mlp")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train_steps(model, x, opt, steps=2)  # state at every entry
    pk.prune(model, 0.5)
    train_steps(model, x, opt, steps=3)
    params = dict(model.named_parameters())
    for q, z in pruned_zeros(model).items():
        state = opt.state[params[q]]
        assert (state["exp_avg"][z] == 0).all() and (state["exp_avg_sq"][z] == 0).all()
        assert (params[q][z] == 0).all()


def test_loaded_optimizer_state_cannot_revive_weights():
    model, x = make("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, x, opt, steps=2)
    saved = copy.deepcopy(opt.state_dict())  # momentum at every entry
    pk.prune(model, 0.5)
    train_steps(model, x, opt, steps=2)
    opt.load_state_dict(saved)
    train_steps(model, x, opt, steps=2)
    assert_zero(model, pruned_zeros(model))


def test_loading_dense_weights_keeps_masks():
    model, _ = make("mlp")
    dense = copy.deepcopy(model.state_dict())
    pk.prune(model, 0.5)
    zeros = pruned_zeros(model)
    model.load_state_dict(dense)
    assert_zero(model, zeros)
