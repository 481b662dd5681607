"""Prune-and-recover: the schedule's steps, exact final sparsity, N:M through wider patterns,
structured models shrunk at the end, and recovery that beats pruning alone."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.train import finetune, prune_and_recover


def regression_data(n: int = 16, seed: int = 0):
    """Batches ``(x, y)`` of a fixed random teacher's outputs: a task with labels."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 8, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(32, 16, generator=g)
        out.append((x, torch.tanh(x @ w)))
    return out


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)
    )


def task_loss(out, batch):
    return F.mse_loss(out, batch[1])


def test_iterative_steps_reach_the_exact_target_and_masks_only_shrink():
    model = mlp()
    data = regression_data()
    snapshots = []

    def watch(m, step):
        snapshots.append({k: v.clone() for k, v in pk.MaskState(m).masks.items()})

    result = prune_and_recover(
        model, pk.PruneConfig(sparsity=0.75), data, recover_steps=10, prune_steps=3,
        method="finetune", inputs=lambda b: b[0], loss_fn=task_loss, lr=1e-3, finalize=False,
        eval_fn=watch, eval_every=10,
    )  # fmt: skip
    assert [s for _, s in result.prunes] == pytest.approx([0.25, 0.5, 0.75])
    assert [step for step, _ in result.prunes] == [0, 10, 20]
    assert result.history.steps == 30
    for earlier, later in itertools.pairwise(snapshots):
        for k in earlier:
            assert not (later[k] & ~earlier[k]).any()  # masks only shrink
    for layer in (0, 2, 4):
        w = model[layer].weight
        assert int((w == 0).sum()) == round(0.75 * w.numel())


def test_nm_passes_through_a_wider_pattern_on_the_way():
    model = mlp()
    groups = []

    def watch(m, step):
        groups.append(int((m[2].weight.reshape(-1, 4) != 0).sum(-1).max()))

    result = prune_and_recover(
        model, pk.PruneConfig(granularity="2:4"), regression_data(), recover_steps=5,
        prune_steps=2, method="finetune", inputs=lambda b: b[0], loss_fn=task_loss,
        eval_fn=watch, eval_every=5,
    )  # fmt: skip
    assert groups == [3, 2]  # 3:4 after the first step, 2:4 after the second
    assert torch.equal(
        (result.model[2].weight.reshape(-1, 4) != 0).sum(-1), torch.full((64 * 16,), 2)
    )
    assert not pk.MaskState(result.model).masks  # baked


def test_recovery_beats_one_shot_pruning_by_distillation():
    dense = mlp()
    data = regression_data()
    finetune(dense, data, steps=100, lr=3e-3, inputs=lambda b: b[0], loss_fn=task_loss)
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(5))

    def error(m):
        with torch.no_grad():
            return float(F.mse_loss(m.eval()(x), dense.eval()(x)))

    oneshot = copy.deepcopy(dense)
    pk.prune(oneshot, 0.8)
    result = prune_and_recover(
        copy.deepcopy(dense), pk.PruneConfig(sparsity=0.8), [b[0] for b in data],
        recover_steps=25, prune_steps=4, lr=2e-3, target="hidden",
    )  # fmt: skip
    assert error(result.model) < 0.8 * error(oneshot)
    assert pk.report(result.model).target_sparsity == pytest.approx(0.8, abs=1e-3)


def test_structured_channels_shrink_physically_at_the_end():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip
    dense = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(4)]
    example = data[0][:1]
    result = prune_and_recover(
        model, pk.PruneConfig(sparsity=0.5, granularity="channel"), data, recover_steps=5,
        prune_steps=2, example_inputs=example, lr=1e-3,
    )  # fmt: skip
    small = result.model
    assert small[0].out_channels == 8 and small[2].out_channels == 8
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(
        p.numel() for p in dense.parameters()
    )
    assert small(data[1]).shape == (8, 4)


def test_bad_method_and_config_are_refused_before_any_change():
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for kwargs, match in [
        ({"method": "magic"}, "method"),
        ({"recover_steps": 0}, "recover_steps"),
        ({"prune_steps": -1}, "prune_steps"),
        ({"hidden_layers": ["9"]}, "names no module"),
        ({"target": "pooledd"}, "target"),
    ]:
        with pytest.raises(ConfigError, match=match):
            prune_and_recover(
                model, pk.PruneConfig(sparsity=0.5), regression_data(2),
                **{"recover_steps": 5, **kwargs},
            )  # fmt: skip
    with pytest.raises(ConfigError, match="sparsity"):
        prune_and_recover(model, pk.PruneConfig(sparsity=1.5), regression_data(2), recover_steps=5)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not pk.MaskState(model).masks


def test_finetune_needs_a_loss():
    model = mlp()
    with pytest.raises(ConfigError, match="loss"):
        finetune(model, [torch.randn(4, 16)], steps=1)
