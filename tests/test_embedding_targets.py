"""Embedding tables as targets: only when included, N:M along each token's vector, magnitude order
for layer-wise criteria, refused under structured granularities, held through training and save."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.targets import select_targets

transformers = pytest.importorskip("transformers")


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.BertModel(config).eval()


def batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 96, (n * 4, 16), generator=g)
    return [{"input_ids": c, "attention_mask": torch.ones_like(c)} for c in ids.split(4)]


WORD = "embeddings.word_embeddings"


def test_embeddings_are_targets_only_when_included():
    model = tiny_bert()
    default = {t.name for t in select_targets(model)}
    assert not any("embeddings" in n for n in default)
    assert {t.name for t in select_targets(model, include=[WORD])} == {WORD}
    by_type = {t.name for t in select_targets(model, include=[nn.Embedding])}
    assert by_type == {WORD, "embeddings.position_embeddings", "embeddings.token_type_embeddings"}
    both = {t.name for t in select_targets(model, include=[r"encoder\..*", WORD])}
    assert both == {n for n in default if n.startswith("encoder.")} | {WORD}


def expected_2_4(w: torch.Tensor) -> torch.Tensor:
    """The two largest |w| of every 4 consecutive entries of each row, computed directly."""
    rows, cols = w.shape
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    for r in range(rows):
        for c in range(0, cols, 4):
            top = w[r, c : c + 4].abs().topk(2).indices + c
            keep[r, top] = True
    return keep


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt", "magnitude"])
def test_a_2_4_table_keeps_the_two_largest_of_each_token_group(criterion):
    model = tiny_bert()
    with torch.no_grad():  # the padding row starts at zero: give it values so no group ties
        model.embeddings.word_embeddings.weight[0].normal_(0, 0.02)
    table = model.embeddings.word_embeddings.weight.detach().clone()
    data = batches() if criterion != "magnitude" else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pk.prune(model, granularity="2:4", criterion=criterion, data=data,
                 include=[r"encoder\..*", WORD])  # fmt: skip
    said = [str(w.message) for w in caught if "embedding tables" in str(w.message)]
    assert bool(said) == (criterion != "magnitude")  # layer-wise criteria say they use magnitude
    w = model.embeddings.word_embeddings.weight.detach()
    assert torch.equal(w != 0, expected_2_4(table))
    assert torch.equal(w[w != 0], table[w != 0])  # kept values untouched: no update is possible
    q = model.encoder.layer[0].attention.self.query.weight.detach()
    assert ((q.view(-1, 4) != 0).sum(1) == 2).all()


def test_layerwise_prune_calibrates_the_blocks_on_the_pruned_table():
    """Embeddings are masked before the blocks, so the blocks see the pruned stream: the first
    block's Wanda masks differ from those of a run that leaves the table dense."""
    with_table, without = tiny_bert(), tiny_bert()
    pk.prune(with_table, 0.5, criterion="wanda", data=batches(), include=[r"encoder\..*", WORD])
    pk.prune(without, 0.5, criterion="wanda", data=batches(), include=[r"encoder\..*"])
    a = with_table.encoder.layer[0].attention.self.query.weight != 0
    b = without.encoder.layer[0].attention.self.query.weight != 0
    assert not torch.equal(a, b)


def test_structured_granularity_refuses_an_included_table_and_leaves_the_model():
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = {"input_ids": torch.randint(0, 96, (1, 8))}
    with pytest.raises(pk.ConfigError, match="element-wise granularity"):
        pk.prune(model, 0.5, granularity="channel", include=[WORD, r"encoder\..*"],
                 example_inputs=example)  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("scope", ["layer", "owl"])
def test_bad_calibration_data_raises_before_the_table_is_masked(scope):
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = [{"input_ids": torch.randint(0, 96, (2, 8)).float()}]  # token ids must be integers
    with pytest.raises(pk.ConfigError):
        pk.prune(model, 0.5, criterion="wanda", scope=scope, data=bad,
                 include=[WORD, r"encoder\..*"])  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_table_tied_to_the_output_head_warns():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    with pytest.warns(UserWarning, match="tied to the output head"):
        pk.prune(model, 0.5, include=["model.embed_tokens"])
    assert torch.equal(model.lm_head.weight == 0, model.model.embed_tokens.weight == 0)


def test_zeros_hold_through_training_and_a_save_load_round_trip(tmp_path):
    model = tiny_bert()
    pk.prune(model, granularity="2:4", include=[WORD, r"encoder\..*"])
    zeros = model.embeddings.word_embeddings.weight.detach() == 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for b in batches():
        model(**b).last_hidden_state.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert (model.embeddings.word_embeddings.weight.detach()[zeros] == 0).all()
    pk.save(model, tmp_path / "m")
    loaded = pk.load(tmp_path / "m")
    w = loaded.embeddings.word_embeddings.weight.detach()
    assert torch.equal(w, model.embeddings.word_embeddings.weight.detach())
    ids = batches()[0]
    torch.testing.assert_close(
        loaded(**ids).last_hidden_state, model(**ids).last_hidden_state, rtol=0, atol=0
    )
