"""Target selection and the report."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.targets import Target, select_targets
from tests.helpers import make


def names(model, **kw):
    return [t.name for t in select_targets(model, **kw)]


def test_default_targets_linear_and_conv():
    model, _ = make("cnn")
    assert names(model) == ["0", "2", "4"]


def test_include_exclude_by_name_regex_type():
    model, _ = make("cnn")
    assert names(model, include=["4"]) == ["4"]
    assert names(model, include=[r"[02]"]) == ["0", "2"]
    assert names(model, include=[nn.Conv2d]) == ["0", "2"]
    assert names(model, exclude=[nn.Linear, "0"]) == ["2"]


def test_hf_output_embeddings_excluded_by_default():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    found = names(model)
    assert "lm_head" not in found
    assert "transformer.h.0.attn.c_attn" in found  # Conv1D layers are targets
    assert "lm_head" in names(model, include=["lm_head"])


def expected_matrix_shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return module.out_channels, module.in_channels * kh * kw
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.nf, module.weight.shape[0]  # HF Conv1D: weight is [in, out]


@pytest.mark.parametrize("name", ["cnn", "hf_conv1d", "mlp"])
def test_matrix_view_round_trips_and_puts_inputs_last(name):
    model, x = make(name)
    for t in select_targets(model):
        m = t.matrix()
        assert tuple(m.shape) == expected_matrix_shape(t.module)
        assert torch.equal(t.from_matrix(m), t.weight.detach())
        if isinstance(t.module, nn.Conv2d):  # input channels vary fastest along the last dim
            assert torch.equal(m[:, : t.module.in_channels], t.weight.detach()[:, :, 0, 0])
    if name == "hf_conv1d":  # row i of the matrix produces output feature i
        first = select_targets(model)[0]
        out = first.module(x[:1])
        torch.testing.assert_close(out[0], first.matrix() @ x[0] + first.module.bias)


def test_report_rows_totals_and_dict():
    model, _ = make("mlp")
    pk.prune(model, granularity="2:4")
    rep = pk.report(model)
    assert [r.name for r in rep.layers] == ["0.weight", "2.weight", "4.weight"]
    assert all(r.nm_valid and r.granularity == "2:4" for r in rep.layers)
    assert rep.target_sparsity == pytest.approx(0.5)
    d = rep.to_dict()
    json.dumps(d)
    assert d["totals"]["params"] == sum(p.numel() for p in model.parameters())
    assert d["layers"][0]["nonzero"] == 32 * 64 // 2
    text = str(rep)
    assert "2:4" in text and "50.00%" in text and "yes" in text


def test_report_counts_tied_embeddings_once():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, tie_word_embeddings=True)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    rep = pk.report(model)
    assert rep.total_params == sum(p.numel() for p in model.parameters())  # torch: once
    assert rep.dense_bytes == 4 * rep.total_params  # the embedding once, not twice


def test_report_flags_broken_nm_groups():
    model, _ = make("mlp")
    pk.prune(model, granularity="2:4")
    pk.finalize(model)
    with torch.no_grad():
        model[0].weight[0, :4] = 1.0  # four non-zeros in one group
    rep = pk.report(model)
    assert rep.layers[0].nm_valid is False and rep.layers[1].nm_valid is True
    assert "NO" in str(rep)


def test_report_of_unpruned_model_lists_prunable_layers():
    model, _ = make("cnn")
    rep = pk.report(model)
    assert [r.name for r in rep.layers] == ["0.weight", "2.weight", "4.weight"]
    assert all(r.sparsity == 0 for r in rep.layers)


def test_target_qualname():
    lin = nn.Linear(2, 2)
    assert Target("", lin).qualname == "weight"
    assert Target("a.b", lin).qualname == "a.b.weight"
