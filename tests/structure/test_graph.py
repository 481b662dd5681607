"""Dependency graph: couplings found, unknown ops refused, never a silently wrong model."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, TargetError, VerificationError
from prunekit.structure import channel_groups, head_groups

from .zoo import INPUTS, ZOO


def _slots(group):
    return {(s.name, s.dim) for s in group.slots}


def _index(group):
    return {(s.name, s.dim): i for s, i in group.members()}


def _group_of(groups, name, dim=0):
    return next(g for g in groups if (name, dim) in _slots(g))


def test_residual_and_concat_couplings():
    model, x = ZOO["cnn"](), INPUTS["cnn"]()
    groups = channel_groups(model, x).groups
    stream = _group_of(groups, "stem.0.weight")
    # the residual add couples the stem with the block's last conv and its BN
    assert {("block.3.weight", 0), ("block.4.weight", 0), ("left.weight", 1)} <= _slots(stream)
    left = _group_of(groups, "left.weight")
    # concat: the left branch's channels are the first 24 of the depthwise conv
    assert ("dw.weight", 0) in _slots(left)
    dw = _index(left)
    assert dw[("dw.weight", 0)].max() < 24
    right = _group_of(groups, "right.0.weight")
    assert _index(right)[("dw.weight", 0)].min() >= 24
    # flatten after a 2x2 pool: each channel owns 4 columns of fc1
    fc1 = dw[("fc1.weight", 1)]
    assert fc1.shape[1] == 4


def test_grouped_conv_removes_same_local_index_in_every_group():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 4, 1)
    )
    groups = channel_groups(model, torch.randn(1, 3, 6, 6)).groups
    first = _group_of(groups, "0.weight")
    idx = _index(first)
    assert idx[("0.weight", 0)].shape == (4, 2)  # local index j of both groups: {j, 4 + j}
    assert (idx[("0.weight", 0)][:, 1] - idx[("0.weight", 0)][:, 0] == 4).all()
    x = torch.randn(1, 3, 6, 6)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    assert small[2].groups == 2 and small[2].in_channels == 4


def test_unknown_op_leaves_group_unpruned_with_warning():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 2)

        def forward(self, x):
            h = self.a(x)
            h = torch.fft.fft(h).real  # mixes channels: no rule
            return self.c(torch.relu(self.b(h)))

    model, x = Odd(), torch.randn(3, 4)
    with pytest.warns(UserWarning, match=r"fft_fft in module <root>|fft in module"):
        analysis = channel_groups(model, x)
    names = {s.name for g in analysis.groups for s in g.slots}
    assert "a.weight" not in names and "b.weight" in names
    with pytest.warns(UserWarning, match="fft"):
        pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    assert pk.shrink(model, x).a.out_features == 16


def test_normalized_channels_stay(recwarn):
    model, x = ZOO["bert"](), INPUTS["bert"]()
    groups = channel_groups(model, x).groups
    names = {s.name for g in groups for s in g.slots}
    assert "encoder.layer.0.intermediate.dense.weight" in names
    assert "embeddings.word_embeddings.weight" not in names  # LayerNorm'd hidden width
    assert "pooler.dense.weight" not in names  # the pooler's output is the interface


def test_tied_embeddings_keep_one_parameter():
    model, x = ZOO["gpt2"](), INPUTS["gpt2"]()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    assert small.lm_head.weight is small.transformer.wte.weight


def test_kv_cache_on_llama_returns_a_smaller_cache():
    model, x = ZOO["llama"](), INPUTS["llama"]()
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    small = pk.shrink(model, x)
    out = small(**x)
    assert out.past_key_values is not None
    nxt = small(input_ids=x["input_ids"][:, :1], past_key_values=out.past_key_values)
    assert nxt.logits.shape == (2, 1, 64)
    attn = small.model.layers[0].self_attn
    assert attn.q_proj.out_features == 2 * attn.head_dim
    assert attn.num_key_value_groups == 1


def test_gqa_whole_kv_groups():
    model, x = ZOO["llama"](), INPUTS["llama"]()
    pk.prune(model, 0.5, granularity=pk.Head(kv_groups=True), example_inputs=x)
    small = pk.shrink(model, x)
    attn = small.model.layers[0].self_attn
    assert attn.k_proj.out_features == attn.head_dim  # one of two KV groups left
    assert attn.q_proj.out_features == 2 * attn.head_dim
    assert attn.num_key_value_groups == 2


def test_t5_heads_coupled_across_layers():
    model = ZOO["t5"]()
    groups = [g for g in head_groups(model) if g.name.endswith("SelfAttention")]
    assert groups and all(len({s.module for s in g.slots}) > 4 for g in groups)


def test_shrink_refuses_a_wrong_model(monkeypatch):
    model, x = ZOO["mlp"](), INPUTS["mlp"]()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    shrink_mod = importlib.import_module("prunekit.structure.shrink")

    real = shrink_mod._removals

    def wrong(groups, *cache):
        out = real(groups, *cache)
        first = next(iter(out.values()))
        dim = next(iter(first))
        drop = first[dim].clone()
        drop[torch.nonzero(drop).flatten()[-1]] = False  # forget to remove one pruned channel
        first[dim] = drop
        return out

    monkeypatch.setattr(shrink_mod, "_removals", wrong)
    with pytest.raises(VerificationError):
        pk.shrink(model, x)


def test_structured_needs_example_inputs():
    with pytest.raises(ConfigError, match="example_inputs"):
        pk.prune(ZOO["mlp"](), 0.5, granularity="channel")


def test_head_granularity_needs_attention():
    with pytest.raises(TargetError, match="attention"):
        pk.prune(ZOO["mlp"](), 0.5, granularity="head", example_inputs=INPUTS["mlp"]())


def test_exclude_keeps_a_group_whole():
    model, x = ZOO["mlp"](), INPUTS["mlp"]()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x, exclude=["4"])
    small = pk.shrink(model, x)
    assert small[0].out_features == 32 and small[2].out_features == 64


class GatedConv(nn.Module):
    """chunk into two halves that multiply (a GLU), on tuple inputs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x, scale):
        left, right = self.a(x).chunk(2, dim=1)
        return self.b(left * torch.sigmoid(right)) * scale


def test_chunk_couples_both_halves_and_tuple_inputs_work():
    model, x = GatedConv(), (torch.randn(2, 3, 5, 5), torch.tensor(2.0))
    (group,) = channel_groups(model, x).groups
    rows = _index(group)[("a.weight", 0)]
    assert rows.shape == (16, 2) and (rows[:, 1] - rows[:, 0] == 16).all()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    assert small.a.out_channels == 16 and small.b.in_channels == 8


def test_nan_weights_raise_before_anything_is_masked():
    from prunekit.errors import WeightError
    from prunekit.masks import MaskState

    model, x = ZOO["mlp"](), INPUTS["mlp"]()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(WeightError, match="NaN"):
        pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    assert not MaskState(model).masks


class SplitSwap(nn.Module):
    """split at literal sizes: removing channels would move the cut."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 24, 1), nn.Conv2d(24, 8, 1)

    def forward(self, x):
        p, q = torch.split(self.a(x), [10, 14], dim=1)
        return self.b(torch.cat([q, p], 1).relu())


def test_cut_at_fixed_positions_is_refused_not_broken():
    model, x = SplitSwap(), torch.randn(2, 3, 4, 4)
    with pytest.warns(UserWarning, match="sliced at positions fixed by the code"):
        pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    assert pk.shrink(model, x).a.out_channels == 24


def test_phi3_fused_qkv_heads():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Phi3ForCausalLM(cfg).eval()
    x = INPUTS["llama"]()
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    small = pk.shrink(model, x)
    assert (
        small.config.num_attention_heads == 2
        and small.model.layers[0].self_attn.num_key_value_groups == 1
    )


def test_a_prune_that_removes_nothing_warns():
    model, x = ZOO["mlp"](), INPUTS["mlp"]()
    with pytest.warns(UserWarning, match="removes nothing"):
        pk.prune(model, 0.005, granularity="channel", example_inputs=x)  # 0.32 of a unit
    frozen = nn.Sequential(nn.Linear(4, 3))  # its only channels are the model's output
    with pytest.warns(UserWarning, match="removes nothing"):
        pk.prune(frozen, 0.5, granularity="channel", example_inputs=torch.randn(2, 4))


def test_transposed_weight_linears_are_coupled_like_linears():
    from prunekit.structure.rules.linear import _TransposedLinears

    model, x = _TransposedLinears(), torch.randn(3, 8)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    assert small.a.weight.shape == (8, 8) and small.b.weight.shape == (4, 8)


class DenseBlock(nn.Module):
    """DenseNet style: each layer appends to the list it concatenates."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)])
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(torch.relu(layer(torch.cat(features, 1))))
        return self.head(torch.cat(features, 1))


def test_densenet_list_appends_are_snapshotted():
    model, x = DenseBlock(), torch.randn(2, 3, 6, 6)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)  # verified against the masked model
    assert small.head.in_channels == 12 and small.layers[1].in_channels == 8


def _count_traces(monkeypatch) -> list[int]:
    calls = [0]
    real = importlib.import_module("prunekit.structure.graph").trace

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    for name in ("groups", "attention"):
        monkeypatch.setattr(
            importlib.import_module(f"prunekit.structure.{name}"), "trace", counting
        )
    return calls


def test_one_trace_serves_channels_heads_and_shrink(monkeypatch):
    calls = _count_traces(monkeypatch)
    model, x = ZOO["llama"](), INPUTS["llama"]()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    small = pk.shrink(model, x)  # verified against the masked model
    assert calls[0] == 1
    attn = small.model.layers[0].self_attn
    assert attn.q_proj.out_features < model.model.layers[0].self_attn.q_proj.out_features


def test_depth_only_shrink_needs_no_trace(monkeypatch):
    calls = _count_traces(monkeypatch)
    model, x = ZOO["llama"](), INPUTS["llama"]()
    pk.prune(model, 0.5, granularity="layer", example_inputs=x)
    small = pk.shrink(model, x)
    assert calls[0] == 0 and len(small.model.layers) == len(model.model.layers) // 2
