"""SqueezeBERT head pruning with grouped 1x1-convolution q/k/v (the default config: q/k/v,
intermediate and output groups 4, post-attention groups 1): every block of consecutive heads that
the groups cut loses as many heads, the convolutions keep their groups, the shrunk model computes
what the ORIGINAL model does with the dropped heads silenced (their post-attention columns zeroed:
no prunekit code runs on it) and what the masked model does, and a fresh process reloads it from
the checkpoint alone. A grouped post-attention convolution, and heads that a group would split,
are refused by name with the config values, the model untouched."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import prunekit as pk
from prunekit.errors import CheckpointError, TargetError
from prunekit.masks import get_mask
from prunekit.structure.graph import call_model

from ..test_checkpoint_faults import resign
from .test_heads_families import _reload_in_fresh_process
from .zoo import INPUTS

transformers = pytest.importorskip("transformers")
HEADS, WIDTH = 8, 4  # hidden size 32


def _squeezebert(**groups: int) -> torch.nn.Module:
    """Two layers, 8 heads of 4 channels; the config's own groups unless given."""
    torch.manual_seed(0)
    cfg = transformers.SqueezeBertConfig(
        vocab_size=64, hidden_size=32, embedding_size=32, num_hidden_layers=2,
        num_attention_heads=HEADS, intermediate_size=64, **groups,
    )  # fmt: skip
    return transformers.SqueezeBertModel(cfg).eval()


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(model.encoder.layers)


@pytest.mark.parametrize(
    "groups",
    [{}, {"q_groups": 2, "k_groups": 4, "v_groups": 1}],
    ids=["default", "q2-k4-v1"],
)
def test_grouped_qkv_heads_go_evenly_per_block(groups, tmp_path, loader):
    model, x = _squeezebert(**groups), INPUTS["bert"]()
    conv = _layers(model)[0].attention
    blocks = math.lcm(conv.query.groups, conv.key.groups, conv.value.groups)
    assert blocks == 4 and _layers(model)[0].intermediate.conv1d.groups == 4
    original = copy.deepcopy(model)
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    small = pk.shrink(model, x)
    silenced = copy.deepcopy(original)
    for layer, was, now, quiet in zip(
        _layers(model), _layers(original), _layers(small), _layers(silenced), strict=True
    ):
        post = layer.post_attention.conv1d
        live = get_mask(post, "weight").reshape(post.weight.shape[0], HEADS, WIDTH).any(0).any(1)
        # every block of consecutive heads keeps as many: half of its heads
        assert live.view(blocks, -1).sum(1).tolist() == [HEADS // blocks // 2] * blocks
        kept = torch.nonzero(live).flatten()
        rows = (kept[:, None] * WIDTH + torch.arange(WIDTH)).flatten()
        for name in ("query", "key", "value"):  # the kept heads' rows, the groups kept
            a, b = getattr(now.attention, name), getattr(was.attention, name)
            assert a.groups == b.groups and a.out_channels == len(rows)
            assert torch.equal(a.weight, b.weight[rows]) and torch.equal(a.bias, b.bias[rows])
        assert now.attention.num_attention_heads == len(kept) == HEADS // 2
        cols = was.post_attention.conv1d.weight[:, rows]
        assert torch.equal(now.post_attention.conv1d.weight, cols)
        with torch.no_grad():
            quiet.post_attention.conv1d.weight.view(-1, HEADS, WIDTH, 1)[:, ~live] = 0
    with torch.no_grad():
        got = call_model(small, x)[0]
        torch.testing.assert_close(got, call_model(silenced, x)[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got, call_model(model, x)[0], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, call_model(original, x)[0], atol=1e-4)  # heads went
    _reload_in_fresh_process(loader, small, x, tmp_path)
    # the manifest's check of a grouped convolution's in_channels: groups x weight columns
    query = "encoder.layers.0.attention.query"
    resign(
        tmp_path / "m", lambda h: h["manifest"]["modules"][query]["attrs"].update(in_channels=16)
    )
    with pytest.raises(CheckpointError, match="in_channels = 16 does not describe"):
        pk.load(tmp_path / "m")


@pytest.mark.parametrize(
    ("groups", "why"),
    [
        (
            {"post_attention_groups": 4},
            r"its post-attention convolution is grouped \(post_attention_groups=4\)",
        ),
        ({"k_groups": 16}, r"its 8 heads do not split evenly over the 16 groups of its k conv"),
    ],
    ids=["grouped-post-attention", "group-splits-a-head"],
)
def test_unsupported_groups_are_refused_by_name_untouched(groups, why):
    model, x = _squeezebert(**groups), INPUTS["bert"]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        TargetError, match=r"heads of encoder\.layers\.0 \(SqueezeBertModule\): " + why
    ):
        pk.prune(model, 0.5, granularity="head", example_inputs=x)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
