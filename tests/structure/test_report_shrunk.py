"""The report of a shrunk model states what shrink removed: each resized layer's shape before,
and the model's parameters before its first shrink, through chained shrinks and checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from tests.test_checkpoint_faults import assert_load_refused, resign

from .zoo import LLAMA_LIKE

transformers = pytest.importorskip("transformers")


def _llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**LLAMA_LIKE, "num_hidden_layers": 4})
    return transformers.LlamaForCausalLM(cfg).eval()


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {n: list(p.shape) for n, p in model.named_parameters()}


X = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))


def _pruned(*granularities: str) -> tuple[nn.Module, nn.Module]:
    """The dense model and its copy pruned and shrunk by each granularity in turn."""
    dense = _llama()
    small = copy.deepcopy(dense)
    for g in granularities:
        pk.prune(small, 0.5, granularity=g, example_inputs=X)
        small = pk.shrink(small, X)
    return dense, small


def test_rows_name_the_original_shapes_and_parameters_after_chained_shrinks():
    dense, small = _pruned("head", "layer", "channel")
    rep = pk.report(small)
    original, now = _shapes(dense), _shapes(small)
    assert rep.params_before == sum(p.numel() for p in dense.parameters())
    assert rep.total_params == sum(p.numel() for p in small.parameters()) < rep.params_before / 2
    resized = 0
    for row in rep.layers:
        assert row.shape == now[row.name]
        if original[row.name] == now[row.name]:
            assert row.before is None
        else:  # the shape of the dense model, not of an intermediate shrink
            assert row.before == original[row.name]
            resized += 1
    assert resized >= 7  # q, k, v, o and the three MLP projections of a kept block at least
    q = rep.layers[0]
    assert q.name.endswith("q_proj.weight") and q.before == [32, 32] and q.shape == [16, 16]
    text = str(rep)
    assert "32x32 → 16x16" in text and "75.00%" in text  # 1 - 256 / 1024
    assert f"of {rep.params_before:,} before shrink" in text
    assert rep.to_dict()["totals"]["params_before"] == rep.params_before


def test_shrink_refuses_the_pruner_with_a_hint():
    model = _llama()
    pruner = pk.prune(model, 0.5, granularity="channel", example_inputs=X)
    with pytest.raises(ConfigError, match="pass the model it pruned"):
        pk.shrink(pruner, X)


def test_a_model_that_was_not_shrunk_reports_no_removal():
    model = _llama()
    pk.prune(model, 0.5, granularity="2:4")
    rep = pk.report(model)
    assert rep.params_before is None and all(r.before is None for r in rep.layers)
    assert rep.target_removed == 0
    text = str(rep)
    assert "removed" not in text and "before shrink" not in text and "N:M ok" in text
    assert "params_before" not in rep.to_dict()["totals"]


def test_the_record_survives_save_and_load(tmp_path):
    _, small = _pruned("channel")
    pk.save(small, tmp_path)
    loaded = pk.load(tmp_path)
    assert pk.report(loaded).to_dict() == pk.report(small).to_dict()
    assert pk.report(small).target_removed > 0.4


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda h: h["report"]["layers"][0].update(before=[32]), "before"),
        (lambda h: h["report"]["layers"][0].update(before=[32, 0]), "before"),
        (lambda h: h["report"]["layers"][0].update(before="32x32"), "before"),
        (lambda h: h["report"]["totals"].update(params_before=-1), "before"),
        (lambda h: h["report"].update(totals=[1]), "totals"),
    ],
    ids=["wrong rank", "zero size", "not a list", "negative count", "totals not an object"],
)
def test_a_tampered_record_is_refused_and_the_model_kept(tmp_path, edit, match):
    _, small = _pruned("channel")
    pk.save(small, tmp_path)
    resign(tmp_path, edit)
    assert_load_refused(tmp_path, _llama(), match=match)
