"""Calibration hooks and the block-by-block runner."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.calibrate import Collector, as_batches, collect, find_blocks, run_blockwise
from prunekit.targets import select_targets


class Block(nn.Module):
    """Attention-like block: q/k/v share one input; needs keyword arguments to run right."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, h, mask=None, *, bias, scale=1.0):
        if bias is None:
            raise RuntimeError("bias missing")
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) + mask, -1) @ self.v(h)
        h = h + self.o(att) * scale + bias
        return (h + self.down(torch.relu(self.up(h))),)  # a tuple, as HF blocks used to


class Stack(nn.Module):
    def __init__(self, n: int = 3, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Linear(d, 4)

    def forward(self, ids, attention_mask=None):
        h = self.embed(ids)
        mask = torch.zeros(ids.shape[1], ids.shape[1]) if attention_mask is None else attention_mask
        bias = torch.full((h.shape[-1],), 0.1)  # a keyword the runner must pass along unchanged
        for layer in self.layers:
            h = layer(h, mask, bias=bias, scale=0.5)[0]
        return self.head(h)


def batches(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (2, 7), generator=g) for _ in range(n)]


def test_find_blocks_picks_the_repeated_list():
    model = Stack()
    name, blocks = find_blocks(model, select_targets(model))
    assert name == "layers" and len(blocks) == 3
    assert find_blocks(nn.Sequential(nn.Linear(4, 4)), select_targets(nn.Linear(4, 4))) is None


@pytest.mark.parametrize("offload", [False, True])
def test_blockwise_statistics_equal_whole_model_statistics(offload):
    """Captured kwargs (mask, bias, scale) are passed on: every block sees its true inputs."""
    torch.manual_seed(0)
    model = Stack()
    targets = select_targets(model, exclude="head")
    whole = collect(model, targets, batches(), {"hessian"})
    seen = {}

    def process(ts, stats):
        seen.update(stats)
        return False

    run_blockwise(model, targets, batches(), {"hessian"}, process, offload=offload)
    assert set(seen) == set(whole)
    for name, st in whole.items():
        torch.testing.assert_close(seen[name].inputs.xtx, st.inputs.xtx, rtol=1e-4, atol=1e-4)
        assert seen[name].inputs.n == st.inputs.n == 3 * 2 * 7


def test_layers_that_share_an_input_share_one_hessian():
    model = Stack(n=2)
    targets = select_targets(model, exclude="head")
    stats = collect(model, targets, batches(), {"hessian"})
    q, k, v = (stats[f"layers.0.{n}.weight"].inputs for n in "qkv")
    assert q is k is v
    assert stats["layers.0.o.weight"].inputs is not q
    assert stats["layers.0.up.weight"].inputs is not stats["layers.0.down.weight"].inputs


def test_input_norms_and_hessian_known_answer():
    lin = nn.Linear(3, 2)
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])  # 2 rows
    stats = collect(lin, select_targets(lin), [x], {"hessian"})["weight"].inputs
    torch.testing.assert_close(stats.norms()[0], torch.tensor([(10 / 2) ** 0.5, (4 / 2) ** 0.5, 0]))
    torch.testing.assert_close(stats.hessian()[0], 2 * x.t() @ x / 2)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_input_columns_match_the_matrix_view(groups):
    """Conv inputs unfold into the [out, k*in/g] column order: W_mat @ col reproduces conv."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 4, 5, 5)
    (target,) = select_targets(conv)
    from prunekit.calibrate import input_columns

    cols = input_columns(conv, x)  # [G, N, cols]
    w = target.matrix()  # [out, cols]
    rows = 6 // groups
    y = torch.cat([cols[g] @ w[g * rows : (g + 1) * rows].t() for g in range(groups)], dim=1)
    expect = conv(x).movedim(1, -1).reshape(-1, 6)
    torch.testing.assert_close(y, expect, rtol=1e-4, atol=1e-4)


def test_model_without_block_list_falls_back_with_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.warns(UserWarning, match="no recognisable block list"):
        pk.prune(model, 0.5, criterion="wanda", data=[torch.randn(4, 8) for _ in range(2)])
    assert abs(pk.report(model).target_sparsity - 0.5) < 1e-9


def test_hf_llama_blocks_get_their_rotary_embeddings_and_masks():
    """Block kwargs are captured generically (Llama passes position embeddings and masks)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    data = [
        {"input_ids": torch.randint(0, 64, (2, 12)), "attention_mask": torch.ones(2, 12).long()}
        for _ in range(2)
    ]
    targets = select_targets(model)
    whole = collect(model, targets, data, {"norms"})
    seen = {}
    run_blockwise(model, targets, data, {"norms"}, lambda ts, st: seen.update(st) or False)
    for name, st in whole.items():
        torch.testing.assert_close(seen[name].inputs.sumsq, st.inputs.sumsq, rtol=1e-4, atol=1e-4)
    assert model.config.use_cache  # restored after calibration


@pytest.mark.filterwarnings("ignore:.*no recognisable block list")
def test_bad_batches_get_clear_errors():
    model = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(pk.ConfigError, match="empty"):
        as_batches([])
    with pytest.raises(pk.ConfigError, match="empty tensor"):
        as_batches([torch.zeros(0, 8)])
    with pytest.raises(pk.ConfigError, match="a batch must be a tensor"):
        as_batches(["some text"])
    with pytest.raises(pk.ConfigError, match=r"batch 1 .* does not fit"):
        pk.prune(model, 0.5, criterion="wanda", data=[torch.randn(2, 8), torch.randn(2, 5)])
    with pytest.raises(pk.ConfigError, match="data-aware"):
        pk.prune(model, 0.5, criterion="wanda")
    with pytest.raises(pk.ConfigError, match="empty"):
        pk.prune(model, 0.5, criterion="wanda", data=iter([]))


def test_calibration_restores_training_mode_and_removes_hooks():
    model = Stack()
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.prune(model, 0.5, criterion="wanda", data=batches(), exclude="head")
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(not m._forward_pre_hooks_with_kwargs for m in model.modules())


def test_collector_rejects_unknown_statistics():
    lin = nn.Linear(2, 2)
    with pytest.raises(pk.ConfigError, match="unknown statistics"):
        Collector(select_targets(lin), {"curvature"}, lin)


def test_statistics_all_reduce_over_ranks(tmp_path):
    """With torch.distributed initialised, statistics are summed over ranks (here: one)."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        model = Stack(n=2)
        targets = select_targets(model, exclude="head")
        stats = collect(model, targets, batches(), {"hessian"})
    finally:
        dist.destroy_process_group()
    assert stats["layers.0.q.weight"].inputs.n == 3 * 2 * 7
