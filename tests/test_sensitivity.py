"""Sensitivity curves, their cache, and the allocations built on them."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.analysis.sensitivity import (
    Sensitivity,
    allocate,
    output_error,
    search_allocation,
)
from tests.test_calibrate import Stack, batches


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)
    )
    with torch.no_grad():
        model[2].weight.mul_(0.05)  # a weak middle layer: pruning it costs little
    return model


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_curves_rank_layers_and_leave_the_model_identical(tmp_path):
    model = mlp()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    before = snapshot(model)
    calls = []
    err = output_error(model, [x])

    def eval_fn(m):
        calls.append(1)
        return err(m)

    cache = tmp_path / "sens.json"
    sens = pk.sensitivity(model, eval_fn, sparsities=(0.25, 0.5, 0.75), cache=cache)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert sens.baseline == 0.0
    assert len(calls) == 1 + 3 * 3
    # the expected error of pruning one layer, computed directly
    with torch.no_grad():
        pruned = mlp()
        w = pruned[0].weight
        w.mul_(w.abs() > w.abs().flatten().kthvalue(round(0.5 * w.numel())).values)
        direct = err(pruned)
    assert sens.metric["0.weight"][1] == pytest.approx(direct, rel=1e-5)
    for u in sens.metric:  # more sparsity, more error
        assert sens.metric[u] == sorted(sens.metric[u])
    assert sens.metric["2.weight"][2] < sens.metric["0.weight"][2]
    # the cache answers a repeated sweep without evaluating anything
    calls.clear()
    again = pk.sensitivity(model, eval_fn, sparsities=(0.25, 0.5, 0.75), cache=cache)
    assert calls == [] and again.metric == sens.metric
    # and an extended sweep evaluates only the new sparsity
    pk.sensitivity(model, eval_fn, sparsities=(0.25, 0.5, 0.75, 0.9), cache=cache)
    assert len(calls) == 3
    assert Sensitivity.from_dict(sens.to_dict()) == sens


def test_block_units_and_data_aware_criteria():
    model = Stack()
    data = batches(3)
    err = output_error(model, data)
    sens = pk.sensitivity(model, err, (0.5,), criterion="wanda", units="block", data=data)
    assert list(sens.metric) == ["layers.0", "layers.1", "layers.2"]
    assert all(v[0] > 0 for v in sens.metric.values())
    with pytest.raises(pk.ConfigError, match="data-aware"):
        pk.sensitivity(model, err, (0.5,), criterion="wanda")


def make_sens(curves, sizes):
    return Sensitivity([0.25, 0.5, 0.75], 0.0, curves, sizes, {u: [u] for u in curves})


def test_allocation_meets_the_budget_at_less_predicted_loss_than_uniform():
    sens = make_sens(
        {"flat": [0.0, 0.01, 0.02], "steep": [0.1, 0.5, 2.0], "mid": [0.02, 0.1, 0.4]},
        {"flat": 100, "steep": 100, "mid": 200},
    )
    levels = allocate(sens, 0.5)
    mean = sum(levels[u] * sens.sizes[u] for u in levels) / sum(sens.sizes.values())
    assert mean == pytest.approx(0.5, abs=1e-9)
    assert levels["flat"] == pytest.approx(0.75)  # the cheapest layer goes to the grid's top
    assert levels["steep"] < 0.5 < levels["flat"]

    def predicted(lv):
        import numpy as np

        return sum(np.interp(lv[u], [0, *sens.sparsities], [0, *sens.loss(u)]) for u in sens.metric)

    assert predicted(levels) < predicted(dict.fromkeys(levels, 0.5))
    with pytest.raises(pk.ConfigError, match="outside the measured grid"):
        allocate(sens, 0.8)


def test_search_lowers_the_calibration_loss_and_keeps_the_budget():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)
    )
    before = snapshot(model)
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(2))
    err = output_error(model, [x])
    levels, history = search_allocation(model, err, 0.5, seconds=30, max_evals=60, step=0.1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert sum(levels.values()) / 3 == pytest.approx(0.5)
    assert history == sorted(history, reverse=True) and history[-1] < history[0]


def mlp_sensitive() -> nn.Sequential:
    """Three equal 24x24 layers; the last one carries the signal (pruning it costs the most)."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24)
    )
    with torch.no_grad():
        model[0].weight.mul_(0.2)
        model[4].weight.mul_(5.0)
    return model


def test_sensitivity_scope_meets_the_budget_and_beats_uniform(tmp_path):
    import numpy as np

    from prunekit.targets import select_targets

    x = torch.randn(256, 24, generator=torch.Generator().manual_seed(4))
    model = mlp_sensitive()
    err = output_error(model, [x])
    cache = tmp_path / "cache.json"
    sens = pk.sensitivity(model, err, sparsities=(0.2, 0.4, 0.6, 0.8), cache=cache)
    saved = sens.save(tmp_path / "curves.json")
    for curves in (saved, cache, sens.to_dict()):  # a saved sweep, the cache, inline
        allocated = mlp_sensitive()
        pk.prune(allocated, 0.5, scope={"type": "sensitivity", "curves": str(curves)
                 if not isinstance(curves, dict) else curves})  # fmt: skip
        zeros = {t.qualname: int((t.weight == 0).sum()) for t in select_targets(allocated)}
        assert sum(zeros.values()) == round(0.5 * 3 * 24 * 24)  # the global budget, exactly
        level = {n: z / 576 for n, z in zeros.items()}
        assert level["4.weight"] < 0.5 < level["0.weight"]
    uniform = mlp_sensitive()
    pk.prune(uniform, 0.5)

    def predicted(lv):  # the curves, interpolated here independently of allocate()
        return sum(np.interp(lv[u], [0, *sens.sparsities], [0, *sens.loss(u)]) for u in lv)

    assert predicted(level) < predicted(dict.fromkeys(level, 0.5))
    # and measured: the allocated model's output error is lower than the uniform one's
    assert err(allocated) < 0.8 * err(uniform)


def test_sensitivity_scope_bad_input_leaves_the_model_untouched(tmp_path):
    from tests.test_bad_input import assert_untouched

    model = mlp_sensitive()
    before = snapshot(model)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    partial = make_sens({"0.weight": [0.1, 0.2, 0.3]}, {"0.weight": 576}).save(tmp_path / "p.json")
    cases = [
        (tmp_path / "missing.json", "does not exist"),
        (bad, "not a JSON file"),
        (partial, r"no curve for \['2.weight', '4.weight'\]"),
    ]
    for path, words in cases:
        with pytest.raises(pk.ConfigError, match=words):
            pk.prune(model, 0.5, scope={"type": "sensitivity", "curves": str(path)})
        assert_untouched(model, before)
    with pytest.raises(pk.ConfigError, match="outside the measured grid"):
        pk.prune(model, 0.9, scope={"type": "sensitivity", "curves": str(partial)},
                 include=["0"])  # fmt: skip
    with pytest.raises(pk.ConfigError, match="not a sensitivity sweep"):
        pk.prune(model, 0.5, scope={"type": "sensitivity", "curves": {"sparsities": [0.5]}})
    assert_untouched(model, before)


def test_sensitivity_scope_from_the_command_line(tmp_path, capsys):
    from prunekit.demo import digits_cnn
    from prunekit.targets import select_targets
    from tests.test_cli import FACTORY, run_main

    names = [t.qualname for t in select_targets(digits_cnn())]
    sizes = {t.qualname: t.weight.numel() for t in select_targets(digits_cnn())}
    # the first layer is made the most sensitive: it must keep the most weights
    curves = {n: [0.1 * (i == 0) + 0.01, 0.5 * (i == 0) + 0.02, 2.0 * (i == 0) + 0.05]
              for i, n in enumerate(names)}  # fmt: skip
    path = make_sens(curves, sizes).save(tmp_path / "curves.json")
    scope = json.dumps({"type": "sensitivity", "curves": str(path)})
    out = tmp_path / "out"
    code, _, err = run_main("prune", FACTORY, "--sparsity", "0.5", "--scope", scope, "-o",
                            str(out), capsys=capsys)  # fmt: skip
    assert code == 0, err
    model = pk.load(out, model=digits_cnn())
    zeros = {t.qualname: int((t.weight == 0).sum()) for t in select_targets(model)}
    assert sum(zeros.values()) == round(0.5 * sum(sizes.values()))
    assert zeros[names[0]] / sizes[names[0]] < 0.5
    missing = json.dumps({"type": "sensitivity", "curves": str(tmp_path / "none.json")})
    code, _, err = run_main("prune", FACTORY, "--sparsity", "0.5", "--scope", missing, "-o",
                            str(tmp_path / "o2"), capsys=capsys)  # fmt: skip
    assert code != 0 and "does not exist" in err and not (tmp_path / "o2").exists()
