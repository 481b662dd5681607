"""Calibration split (issue 8): registered statistics with known answers, batches read once,
NaN/inf and wrong-shape data refused before any mask is written."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.calibrate import STATISTICS, Collector, as_batches
from prunekit.calibrate.statistics import example_case, input_columns
from prunekit.masks import get_mask
from prunekit.targets import select_targets
from tests.test_calibrate import Stack, batches


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(get_mask(m, "weight") is None for m in model.modules())


@pytest.mark.parametrize(
    "name, example",
    [(n, e) for n in STATISTICS for e in STATISTICS.examples(n)],
)
def test_every_statistic_matches_an_independent_computation(name, example):
    """Each registered statistic, fed its examples through the hooks, equals the same sum done
    directly on the layer's inputs / activations."""
    seq, x = example_case(*example)
    layer = seq[0]
    target = select_targets(seq)
    with Collector(target, {name}, seq) as col:
        y = seq(x)
        col.end_batch()
        seq(x * 0.5)  # a second batch accumulates
    st = col.stats[target[0].qualname]
    cols = torch.cat([input_columns(layer, x), input_columns(layer, x * 0.5)], 1).double()
    if name == "hessian":
        torch.testing.assert_close(st.inputs.xtx, (cols.transpose(1, 2) @ cols).float())
    elif name == "norms":
        torch.testing.assert_close(st.inputs.sumsq, cols.square().sum(1).float())
    elif name == "outputs":
        dim = 1 if x.dim() > 2 and not isinstance(layer, nn.Linear) else -1
        rows = torch.cat([y, seq(x * 0.5)]).movedim(dim, -1).reshape(-1, y.shape[dim])
        torch.testing.assert_close(st.outputs.apoz(), (rows <= 0).double().mean(0).float())
        torch.testing.assert_close(st.outputs.mean(), rows.double().mean(0).float())
    else:  # a new statistic: at least finite and shaped per layer
        values = (st.inputs or st.outputs).values
        assert values and all(torch.isfinite(v).all() for v in values.values())


def test_hessian_implies_norms_and_registry_refuses_duplicates():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    x = torch.randn(20, 6)
    with Collector(select_targets(lin), {"norms", "hessian"}, lin) as col:
        lin(x)
    (st,) = col.stats.values()
    values = st.inputs.values
    assert set(values) == {"xtx"}  # norms read the Hessian's diagonal: no second accumulator
    torch.testing.assert_close(st.inputs.sumsq, x.square().sum(0, keepdim=True))
    with pytest.raises(RuntimeError, match="registered twice"):
        STATISTICS.register("hessian")(STATISTICS.get("hessian"))
    with pytest.raises(pk.ConfigError, match=r"known: .*hessian"):
        Collector(select_targets(lin), {"hesian"}, lin)


def test_a_generator_serves_both_passes_of_owl():
    """scope='owl' calibrates twice (dense scores, then block by block): a generator must give
    the same masks as the list it yields."""
    masks = []
    for data in (batches(4), (b for b in batches(4))):
        torch.manual_seed(0)
        model = Stack()
        pk.prune(model, 0.5, criterion="wanda", scope="owl", data=data)
        masks.append([get_mask(t.module, t.param).clone() for t in select_targets(model)])
    assert all(torch.equal(a, b) for a, b in zip(*masks, strict=True))
    gen = iter(batches(2))
    list(gen)
    with pytest.raises(pk.ConfigError, match="read only once"):
        as_batches(gen)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_calibration_data_is_refused_before_any_change(bad):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    before = state(model)
    data = [torch.randn(4, 8), torch.randn(4, 8)]
    data[1][2, 3] = bad
    for criterion in ("wanda", "sparsegpt"):
        with pytest.raises(pk.PrunekitError, match="batch 1 holds NaN or inf"):
            pk.prune(model, 0.5, criterion=criterion, data=data)
        assert_untouched(model, before)


def test_wrong_shape_inside_a_block_is_a_config_error_before_any_mask():
    """The attention mask fits the embedding but not the block: the old runner raised torch's
    RuntimeError from inside block 0; a dry forward now names the batch first."""
    torch.manual_seed(0)
    model = Stack()
    before = state(model)
    ids = batches(2)
    data = [(ids[0], torch.zeros(5, 5)), (ids[1], torch.zeros(5, 5))]  # sequences are 7 long
    for criterion in ("wanda", "sparsegpt"):
        with pytest.raises(pk.ConfigError, match=r"batch 0 .*does not fit"):
            pk.prune(model, 0.5, criterion=criterion, data=data)
        assert_untouched(model, before)


def test_batches_laid_out_unlike_the_first_are_refused():
    model = Stack()
    before = state(model)
    ids = batches(2)
    data = [{"ids": ids[0]}, {"ids": ids[1], "attention_mask": torch.zeros(7, 7)}]
    with pytest.raises(pk.ConfigError, match=r"batch 1 .*laid out unlike batch 0"):
        pk.prune(model, 0.5, criterion="sparsegpt", data=data)
    assert_untouched(model, before)
