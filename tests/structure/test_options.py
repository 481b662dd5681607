"""Structured options (round_to, max_ratio, global scope, iterative) and group criteria."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.criteria import CRITERIA
from prunekit.errors import ConfigError
from prunekit.structure import channel_groups
from prunekit.structure.select import unit_scores

from .zoo import INPUTS, ZOO


def _widths(model):
    return [m.out_features for m in model if isinstance(m, torch.nn.Linear)]


def test_round_to_keeps_multiples_of_8():
    model, x = ZOO["mlp"](), INPUTS["mlp"]()
    pk.prune(model, 0.6, granularity=pk.Channel(round_to=8), example_inputs=x)
    small = pk.shrink(model, x)
    assert _widths(small)[:2] == [32, 32]  # 64 * 0.4 = 25.6 kept -> rounded up to 32


def test_max_ratio_caps_every_group():
    model, x = ZOO["mlp"](), INPUTS["mlp"]()
    pk.prune(model, 0.9, granularity=pk.Channel(max_ratio=0.5), example_inputs=x)
    assert _widths(pk.shrink(model, x))[:2] == [32, 32]


def test_global_scope_prunes_unevenly_but_to_the_budget():
    torch.manual_seed(0)
    model, x = ZOO["mlp"](), INPUTS["mlp"]()
    with torch.no_grad():  # 16 near-dead neurons in the second hidden layer
        model[2].weight[:16].mul_(1e-3)
        model[4].weight[:, :16].mul_(1e-3)
    pk.prune(model, 0.5, granularity="channel", scope="global", example_inputs=x)
    small = pk.shrink(model, x)
    w = _widths(small)
    assert w[0] + w[1] == 64 and w[0] != w[1]
    assert w[1] <= 64 - 16  # the near-dead ones went first


def test_iterative_schedule_shrinks_step_by_step():
    model, x = ZOO["cnn"](), INPUTS["cnn"]()
    pruner = pk.Pruner(
        model,
        pk.PruneConfig(0.5, granularity="channel", schedule=pk.Iterative(steps=2)),
        example_inputs=x,
    )
    pruner.step()
    first = sum(p.numel() for p in pk.shrink(model, x).parameters())
    pruner.step()
    second = sum(p.numel() for p in pk.shrink(model, x).parameters())
    assert second < first


def test_bad_options_raise():
    with pytest.raises(ConfigError):
        pk.Channel(round_to=0)
    with pytest.raises(ConfigError):
        pk.Head(max_ratio=1.5)


@pytest.mark.parametrize("criterion", ["magnitude", "l2", "random", "fpgm", "bn-scaling"])
def test_group_criteria_rank_units(criterion):
    model, x = ZOO["cnn"](), INPUTS["cnn"]()
    groups = channel_groups(model, x).groups
    crit = CRITERIA.get(criterion)()
    ctx = pk.criteria.ScoreContext(model)
    for g in groups:
        s = unit_scores(crit, g, ctx)
        assert s.shape == (g.units,) and torch.isfinite(s).all()


def test_bn_scaling_follows_gamma():
    model, x = ZOO["cnn"](), INPUTS["cnn"]()
    with torch.no_grad():
        model.stem[1].weight.copy_(torch.arange(16.0))
        model.block[4].weight.zero_()
    pk.prune(model, 0.25, granularity="channel", criterion="bn-scaling", example_inputs=x)
    assert (model.stem[1].weight[:4] == 0).all() and (model.stem[1].weight[4:] != 0).all()


def _taylor(name: str, data, loss_fn=None):
    model, x = ZOO[name](), INPUTS[name]()
    kw = {"data": data(x), "loss_fn": loss_fn}
    pk.prune(model, 0.5, granularity="channel", criterion="taylor", example_inputs=x, **kw)
    return pk.shrink(model, x)


def test_taylor_with_loss_fn_and_model_loss():
    small = _taylor("mlp", lambda x: [x, x], lambda out, batch: out.square().mean())
    assert _widths(small)[:2] == [32, 32]
    small = _taylor("llama", lambda x: [{**x, "labels": x["input_ids"]}])  # the model's own loss
    assert small.model.layers[0].mlp.up_proj.out_features == 64


def test_taylor_unstructured_needs_a_loss():
    model, x = ZOO["mlp"](), INPUTS["mlp"]()
    pk.prune(model, 0.5, criterion="taylor", data=[x], loss_fn=lambda o, b: o.sum())
    with pytest.raises(ConfigError, match="loss"):
        pk.prune(ZOO["mlp"](), 0.5, criterion="taylor", data=[x])


def test_channel_scores_hook_drives_group_scores():
    """An activation criterion (e.g. APoZ) only has to give per-output-channel scores."""

    class LastChannelsMatter(pk.criteria.Criterion):
        def channel_scores(self, target, ctx):
            return torch.arange(target.weight.shape[0], dtype=torch.float32)

        def scores(self, target, ctx):
            raise AssertionError("element scores are not needed")

    model, x = ZOO["mlp"](), INPUTS["mlp"]()
    (first, *_) = channel_groups(model, x).groups
    s = unit_scores(LastChannelsMatter(), first, pk.criteria.ScoreContext(model))
    assert torch.equal(s, torch.arange(64, dtype=torch.float32))


def test_non_uniform_widths_round_trip_through_the_shape_manifest(tmp_path):
    model, x = ZOO["llama"](), INPUTS["llama"]()
    scope = pk.Global(normalize="mean")  # scores relative to each group: widths differ
    pk.prune(model, 0.5, granularity="channel", scope=scope, example_inputs=x)
    small = pk.shrink(model, x)
    widths = {m.up_proj.out_features for m in (layer.mlp for layer in small.model.layers)}
    assert len(widths) > 1  # the config cannot say this; the manifest does
    pk.save(small, tmp_path / "m")
    back = pk.load(tmp_path / "m", model=ZOO["llama"]())
    with torch.no_grad():
        assert torch.equal(back(**x).logits, small(**x).logits)


def test_activation_importance_prunes_the_neurons_that_carry_least():
    torch.manual_seed(0)
    model, x = ZOO["mlp"](), INPUTS["mlp"]()
    data = [torch.randn(16, 20, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with torch.no_grad():  # independent: the L2 norm of each hidden neuron of layer 2
        acts = torch.cat(
            [torch.nn.functional.gelu(model[2](torch.relu(model[0](b)))) for b in data]
        )
    expected = set(torch.argsort(acts.norm(dim=0))[:32].tolist())
    pk.prune(model, 0.5, granularity="channel", criterion="activation", example_inputs=x, data=data)
    pruned = set(torch.nonzero(~model[2].weight.any(1)).flatten().tolist())
    assert pruned == expected
