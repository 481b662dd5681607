"""Attention served by its class's head adapter is not analysed by structure (it costs the most
of a channel prune of BERT-base, and ``head_groups`` set the result aside): structure still finds
the heads of the attention no adapter knows, and a head prune of both shrinks and verifies."""

from __future__ import annotations

import torch
from torch import nn

import prunekit as pk
from prunekit.structure.attention import FoundHeads, find_heads
from prunekit.structure.heads import head_groups, served_by_class

from .test_heads_structure import Separate


class BertThenPlain(nn.Module):
    """A one-layer BERT (``BertAttention``: a class adapter) under a plain sdpa attention
    (``to_q``/``to_k``/``to_v``/``proj``: structure only)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=16,
        )  # fmt: skip
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.plain = Separate(sdpa=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.plain(self.bert(input_ids=input_ids).last_hidden_state)


def _model_and_inputs() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    return BertThenPlain().eval(), ids


def test_structure_skips_attention_its_adapter_serves():
    model, ids = _model_and_inputs()
    served = served_by_class(model)
    assert served == ["bert.encoder.layer.0.attention"]
    found = find_heads(model, ids, served)
    assert [f.module for f in found] == ["plain"]  # not bert.encoder.layer.0.attention.self
    assert isinstance(found[0], FoundHeads) and (found[0].hq, found[0].d) == (4, 8)
    names = sorted(g.name for g in head_groups(model, example_inputs=ids))
    assert names == ["bert.encoder.layer.0.attention.heads", "plain.heads"]


def test_head_prune_of_served_and_structural_attention_shrinks():
    model, ids = _model_and_inputs()
    pk.prune(model, 0.5, granularity="head", example_inputs=ids)
    small = pk.shrink(model, ids)  # verifies against the masked model
    assert small.plain.heads == 2 and small.plain.proj.in_features == 16
    attention = small.bert.encoder.layer[0].attention.self
    assert attention.num_attention_heads == 2 and attention.query.out_features == 16
