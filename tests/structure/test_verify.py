"""Shrink's verification on a cut of the example inputs, and the cached channel groups."""

from __future__ import annotations

import copy
import importlib
from collections import namedtuple

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, VerificationError
from prunekit.structure.probe import probe, window_tokens

shrink_mod = importlib.import_module("prunekit.structure.shrink")


def _tokens(batch: int = 2, length: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertForSequenceClassification(cfg).eval()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()


class TokenMixer(nn.Module):
    """Mixes its 64 tokens with a Linear over the sequence: it needs exactly 64 tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(64, 16)
        self.mix = nn.Linear(64, 64)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.mix(self.emb(input_ids).transpose(1, 2)).transpose(1, 2)
        return self.down(torch.relu(self.up(h)))


def test_probe_cuts_samples_tokens_and_images():
    x = _tokens(2, 128)
    cut = probe(x)
    assert set(cut) == set(x)
    assert torch.equal(cut["input_ids"], x["input_ids"][:1, :16])
    assert torch.equal(cut["attention_mask"], x["attention_mask"][:1, :16])
    img = torch.randn(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    small = probe(img)
    assert torch.equal(small, img[:1, :, :56, :56])
    assert small.is_contiguous(memory_format=torch.channels_last)  # the caller's layout
    pair = probe((torch.randn(4, 8, 3), torch.randn(4, 5)))  # one sample, nothing else
    assert [tuple(t.shape) for t in pair] == [(1, 8, 3), (1, 5)]


def test_probe_keeps_two_windows_of_windowed_attention():
    """A model whose attention runs another path up to a window or chunk length is cut to at
    least two of its longest windows (a per-layer list counts its largest; None is no window)."""
    from types import SimpleNamespace

    def model(**config) -> torch.nn.Module:
        m = torch.nn.Linear(1, 1)
        m.config = SimpleNamespace(**config)
        return m

    assert window_tokens(torch.nn.Linear(1, 1)) == 0
    assert window_tokens(model(sliding_window=None, use_cache=True)) == 0
    assert window_tokens(model(attention_window=[4, 32, 8])) == 64
    assert window_tokens(model(lsh_attn_chunk_length=64, local_attn_chunk_length=128)) == 256
    x = {"input_ids": torch.zeros(2, 512, dtype=torch.long)}
    assert probe(x)["input_ids"].shape == (1, 64)  # 1/8 of the tokens
    assert probe(x, min_tokens=256)["input_ids"].shape == (1, 256)
    assert probe(x, min_tokens=1024)["input_ids"].shape == (1, 512)  # one sample, every token


def test_probe_leaves_what_it_cannot_cut():
    assert probe(torch.randn(1, 3, 32, 32)) is None  # one sample, the smallest image already
    assert probe({"input_ids": torch.zeros(1, 16, dtype=torch.long)}) is None
    assert probe(torch.randn(1, 100, 8)) is None  # float sequences are not token ids
    Pair = namedtuple("Pair", "a b")
    assert probe(Pair(torch.randn(2, 3), torch.randn(2, 3))) is None  # not rebuilt
    assert probe({"input_ids": torch.zeros(2, 64, dtype=torch.long), "cache": object()}) is None


def _corrupt(monkeypatch, name: str):
    """Make shrink corrupt one kept weight (of module ``name``) of its copy before it verifies
    it."""
    real = shrink_mod.update_config

    def corrupted(small, heads):
        with torch.no_grad():
            small.get_submodule(name).weight.view(-1)[0] += 1.0
        return real(small, heads)

    monkeypatch.setattr(shrink_mod, "update_config", corrupted)


def _pruned(build, x, granularities=("channel",)):
    model = build()
    for g in granularities:
        pk.prune(model, 0.5, granularity=g, example_inputs=x)
    return model


@pytest.mark.parametrize(
    "build, x, granularities, layer",
    [
        (_bert, _tokens(), ("channel", "head"), "bert.encoder.layer.0.output.dense"),
        (_cnn, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), ("channel",),
         "3"),
    ],
    ids=["tokens", "images"],
)  # fmt: skip
def test_verification_on_a_cut_matches_and_catches(monkeypatch, build, x, granularities, layer):
    model = _pruned(build, x, granularities)
    small = pk.shrink(model, x)
    # the cut passed: the shrunk model computes what the masked one does on the full inputs too
    with torch.no_grad():
        ref, out = (m(**x) if isinstance(x, dict) else m(x) for m in (model, small))
    ref, out = (o.logits if hasattr(o, "logits") else o for o in (ref, out))
    assert torch.allclose(ref, out, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    _corrupt(monkeypatch, layer)
    with pytest.raises(VerificationError, match="a cut of example_inputs"):
        pk.shrink(model, x)


def test_a_model_refusing_the_cut_is_verified_on_full_inputs(monkeypatch):
    x = _tokens(2, 64)
    model = _pruned(TokenMixer, x)
    small = pk.shrink(model, x)
    assert small.up.out_features == 16
    with torch.no_grad():
        assert torch.allclose(model(**x), small(**x), atol=1e-6)
    _corrupt(monkeypatch, "down")
    with pytest.raises(VerificationError, match="on example_inputs"):
        pk.shrink(model, x)


class MeanPool(nn.Module):
    """Averages its tokens over the attention mask: NaN where a sample's mask is all zeros."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(64, 16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.down(torch.relu(self.up(self.emb(input_ids))))
        m = attention_mask[..., None].float()
        return (h * m).sum(1) / m.sum(1)


def test_a_cut_with_non_finite_outputs_is_verified_on_full_inputs(monkeypatch):
    x = _tokens(2, 64)
    x["attention_mask"][:, :32] = 0  # left padding: the cut's first tokens are all padding
    model = _pruned(MeanPool, x)
    with torch.no_grad():
        assert bool(probe(x) is not None and model(**probe(x)).isnan().all())
    small = pk.shrink(model, x)
    with torch.no_grad():
        assert torch.allclose(model(**x), small(**x), atol=1e-6)
    _corrupt(monkeypatch, "down")
    with pytest.raises(VerificationError, match="on example_inputs"):
        pk.shrink(model, x)


def test_cached_groups_follow_a_replaced_module():
    x = torch.randn(2, 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    twin = copy.deepcopy(model)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)  # traces; groups cached
    dead_rows = (model[0].weight == 0).all(1)
    assert int(dead_rows.sum()) == 8
    model[2] = nn.Linear(16, 4)  # same shapes, another module: the cached groups are stale
    small = pk.shrink(model, x)
    assert small[2].in_features == 8
    assert torch.equal(small[2].weight, model[2].weight[:, ~dead_rows])
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)
    # a deep copy keeps the cache, pointing at its own modules
    pk.prune(twin, 0.5, granularity="channel", example_inputs=x)
    copied = copy.deepcopy(twin)
    groups = shrink_mod.cached_groups(copied, x)
    assert groups is not None
    assert {id(s.module) for g in groups for s in g.slots} <= {id(m) for m in copied.modules()}


def test_a_dropped_pruned_model_is_freed_without_the_garbage_collector():
    import gc
    import weakref

    x = torch.randn(2, 3, 64, 64)
    model = _pruned(_cnn, x)  # pk.prune caches its groups on the model
    small = pk.shrink(model, x)
    gone = weakref.ref(model), weakref.ref(small), weakref.ref(model[0].weight)
    gc.disable()
    try:
        del model, small
        assert [r() for r in gone] == [None, None, None]  # no reference cycle holds them
    finally:
        gc.enable()


def test_full_verification_reaches_what_the_cut_leaves(monkeypatch):
    """A corrupted embedding row of a token that only appears past the cut slips through the
    cut; ``verify_on="full"`` compares on every token and catches it."""
    x = _tokens(2, 64)
    x["input_ids"] = x["input_ids"] % 32  # ids 0-31 everywhere ...
    x["input_ids"][:, 40] = 63  # ... and 63 only past the cut's 16 tokens
    model = _pruned(MeanPool, x)
    real = shrink_mod.update_config

    def corrupted(small, heads):
        with torch.no_grad():
            small.emb.weight[63] += 1.0
        return real(small, heads)

    monkeypatch.setattr(shrink_mod, "update_config", corrupted)
    pk.shrink(model, x)  # the cut never reads row 63
    with pytest.raises(VerificationError, match="on example_inputs"):
        pk.shrink(model, x, verify_on="full")
    with pytest.raises(ConfigError, match="valid choices"):
        pk.shrink(model, x, verify_on="some")


def test_float32_rounding_is_told_from_a_real_difference_in_float64(monkeypatch):
    """A difference above rtol in float32 is checked again on float64 copies: rounding alone
    (here a tolerance below float32's resolution) passes, a changed weight still fails, and the
    masked model keeps its dtype and masks."""
    x = _tokens()
    model = _pruned(_bert, x, ("channel", "head"))
    masks = set(pk.MaskState(model).masks)
    small = pk.shrink(model, x)
    with torch.no_grad():
        rounding = shrink_mod.max_rel_error(model(**x).logits, small(**x).logits)
    assert 0 < rounding < 1e-5  # float32 rounding, not zero
    calls = []
    real = shrink_mod._error_in_float64
    monkeypatch.setattr(
        shrink_mod, "_error_in_float64", lambda *a: calls.append(real(*a)) or calls[-1]
    )
    small = pk.shrink(model, x, rtol=1e-12, verify_on="full")  # float64: below 1e-12
    assert len(calls) == 1 and calls[0] < 1e-12
    assert all(p.dtype == torch.float32 for p in [*model.parameters(), *small.parameters()])
    assert set(pk.MaskState(model).masks) == masks
    _corrupt(monkeypatch, "bert.encoder.layer.0.output.dense")
    with pytest.raises(VerificationError, match=r"in float64: \d"):
        pk.shrink(model, x, rtol=1e-12)
