"""Rules added for issue 10's remaining gaps: group norms with several channels per group, LSTMs,
CodeGen's mp_num head blocks."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError


def test_group_norm_loses_whole_groups_and_keeps_its_group_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.ReLU(), nn.Conv2d(16, 4, 1))
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no channel may stay with a warning
        pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    kept = model[0].weight.detach().flatten(1).any(1).nonzero().flatten()
    groups = set((kept // 4).tolist())
    assert len(kept) == 8 and sorted(kept.tolist()) == [
        c for g in groups for c in range(4 * g, 4 * g + 4)
    ]
    small = pk.shrink(model, x)
    gn = small[1]
    assert (gn.num_groups, gn.num_channels) == (2, 8)
    # independent: the kept channels of a fresh GroupNorm(2, 8) with the kept affine parameters
    ref = nn.GroupNorm(2, 8)
    ref.load_state_dict({"weight": model[1].weight[kept], "bias": model[1].bias[kept]})
    with torch.no_grad():
        h = torch.nn.functional.conv2d(x, model[0].weight[kept], model[0].bias[kept])
        torch.testing.assert_close(small[1](small[0](x)), ref(h), rtol=0, atol=1e-6)


def test_lstm_hidden_units_go_in_every_gate_layer_and_direction():
    torch.manual_seed(0)
    lstm = nn.LSTM(16, 12, num_layers=2, bidirectional=True, batch_first=True)
    model = nn.Sequential(nn.Linear(8, 16), lstm)
    model = nn.Sequential(*model, _First(), nn.Linear(24, 4)).eval()
    x = torch.randn(2, 5, 8)
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    # independent: a fresh LSTM holding the kept units' gate rows and recurrent columns
    kept = model[3].weight.detach()[:, :12].any(0).nonzero().flatten()
    assert len(kept) == 6 and small[1].hidden_size == 6
    rows = torch.cat([g * 12 + kept for g in range(4)])
    ref = nn.LSTM(small[1].input_size, 6, num_layers=2, bidirectional=True, batch_first=True)
    inputs = model[0].weight.detach().any(1).nonzero().flatten()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            full = getattr(lstm, name)[rows]
            cols = inputs if name.startswith("weight_ih_l0") else None
            if name.startswith("weight_hh"):
                cols = kept
            elif name.startswith("weight_ih") and cols is None:  # layer 1: [fwd H | bwd H]
                cols = torch.cat([kept, 12 + kept])
            p.copy_(full[:, cols] if cols is not None else full)
        h = small[0](x)
        torch.testing.assert_close(small[1](h)[0], ref(h)[0], rtol=0, atol=1e-6)


class _First(nn.Module):
    def forward(self, out: tuple) -> torch.Tensor:
        return out[0]


def test_codegen_heads_go_evenly_from_each_mp_block():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CodeGenConfig(
        vocab_size=64, n_embd=64, n_layer=1, n_head=16, rotary_dim=4, n_positions=16, n_ctx=16
    )
    torch.manual_seed(0)
    model = transformers.CodeGenForCausalLM(cfg).eval()
    x = {"input_ids": torch.randint(0, 64, (2, 8))}
    pk.prune(model, 0.5, granularity="head", scope="global", example_inputs=x)
    # independent: the kept heads by the output projection's columns, 4 heads per mp block
    kept = model.transformer.h[0].attn.out_proj.weight.detach().view(64, 16, 4).any(2).any(0)
    assert kept.view(4, 4).sum(1).tolist() == [2, 2, 2, 2]
    small = pk.shrink(model, x)
    attn = small.transformer.h[0].attn
    assert (attn.num_attention_heads, attn.embed_dim, attn.qkv_proj.out_features) == (8, 32, 96)


def _lstm_head() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.LSTM(6, 8, 2, batch_first=True), _First(), nn.Linear(8, 3)).eval()


def test_taylor_ranks_lstm_units_by_their_own_gradients():
    model, x = _lstm_head(), torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(1))
    loss_fn = lambda out, batch: out.square().mean()  # noqa: E731
    # independent: |w * dL/dw| summed over every weight slice of hidden unit j (biases are not
    # scored, as in any layer), which goes from both layers at once (nn.LSTM has one hidden
    # size): in each layer its 4 gate rows in both weight matrices and its recurrent column; the
    # input column of what reads it (layer 1's input weights, the head)
    lstm, head = model[0], model[2]
    params = [*lstm.parameters(), head.weight]
    grads = torch.autograd.grad(loss_fn(model(x), x), params)
    taylor = {id(p): (p * g).abs().detach() for p, g in zip(params, grads, strict=True)}
    score = torch.zeros(8)
    for j in range(8):
        rows = [g * 8 + j for g in range(4)]
        for layer in (0, 1):
            for kind in ("weight_ih", "weight_hh"):
                score[j] += taylor[id(getattr(lstm, f"{kind}_l{layer}"))][rows].sum()
            score[j] += taylor[id(getattr(lstm, f"weight_hh_l{layer}"))][:, j].sum()
        score[j] += taylor[id(lstm.weight_ih_l1)][:, j].sum() + taylor[id(head.weight)][:, j].sum()
    pk.prune(model, 0.5, granularity="channel", criterion="taylor", data=[x], loss_fn=loss_fn,
             example_inputs=x)  # fmt: skip
    kept = set(score.argsort()[4:].tolist())
    head_only = taylor[id(head.weight)].sum(0)  # what ranked them when LSTM weights were skipped
    assert set(head_only.argsort()[4:].tolist()) != kept
    assert set(head.weight.detach().any(0).nonzero().flatten().tolist()) == kept


def test_activation_statistics_refuse_lstm_units_before_any_mask():
    model, x = _lstm_head(), torch.randn(4, 5, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"recurrent layer 0 .LSTM.*taylor"):
        pk.prune(model, 0.5, granularity="channel", criterion="activation", data=[x],
                 example_inputs=x)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(n.endswith("_pk_mask") for n, _ in model.named_buffers())


@pytest.mark.parametrize(
    "selector", [{"exclude": ["0"]}, {"exclude": [nn.LSTM]}, {"include": ["2"]}]
)
def test_an_excluded_lstm_keeps_its_units(selector):
    model, x = _lstm_head(), torch.randn(4, 5, 6)
    lstm = {k: v.clone() for k, v in model[0].state_dict().items()}
    pk.prune(model, 0.5, granularity="channel", example_inputs=x, **selector)
    assert all(torch.equal(lstm[k], v) for k, v in model[0].state_dict().items())
    assert not any(n.endswith("_pk_mask") for n, _ in model[0].named_buffers())
    # the head's inputs are the LSTM's units: cutting them would need the LSTM cut too
    assert bool(model[2].weight.detach().all())


# -- the residual width of BART, Whisper and wav2vec2 ---------------------------------------------
class _Positions(nn.Module):
    """Linear -> + positions -> ReLU -> Linear; ``read`` picks how the positions are found."""

    def __init__(self, read: str) -> None:
        super().__init__()
        self.read = read
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 4)
        self.table = nn.Embedding(6, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        w = self.table.weight
        if self.read == "shape of a pick":  # BART: embed_positions(inputs_embeds[:, :, -1])
            pos = self.table(torch.arange(h[:, -1].shape[0]))
        elif self.read == "value of a pick":
            pos = h[:, -1].unsqueeze(1)
        elif self.read == "rows by slice":  # Whisper's decoder: weight[past : past + T]
            pos = w[1 : 1 + h.shape[0]]
        else:  # "rows by index": weight[position_ids]
            pos = w[torch.tensor([4, 0, 2])]
        return self.out(torch.relu(h + pos))


def _prune_quietly(model: nn.Module, x: torch.Tensor) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no channel may stay with a warning
        pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    return pk.shrink(model, x)


@pytest.mark.parametrize("read", ["shape of a pick", "rows by slice", "rows by index"])
def test_position_tables_lose_the_pruned_width(read):
    torch.manual_seed(0)
    model, x = _Positions(read).eval(), torch.randn(3, 8)
    small = _prune_quietly(model, x)
    # independent: the kept channels are the first layer's live rows; the shrunk table holds
    # those columns of the masked one, and the head the same columns
    kept = model.inp.weight.detach().any(1).nonzero().flatten()
    assert len(kept) == 8 and small.table.embedding_dim == 8
    assert torch.equal(small.table.weight, model.table.weight.detach()[:, kept])
    assert torch.equal(small.out.weight, model.out.weight.detach()[:, kept])


def test_a_pick_whose_value_is_read_keeps_its_channels_with_a_warning():
    model, x = _Positions("value of a pick").eval(), torch.randn(3, 8)
    with pytest.warns(UserWarning, match=r"picks single channels.*__getitem__ in module <root>"):
        pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    assert bool(model.inp.weight.detach().any(1).all())


def _weight_normed(dim: int | None) -> nn.Module:
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(3, 16, 3),
        nn.ReLU(),
        weight_norm(nn.Conv1d(16, 16, 5, padding=2, groups=4), dim=dim),
        nn.ReLU(),
        nn.Conv1d(16, 4, 1),
    ).eval()


@pytest.mark.parametrize("dim", [2, None])
def test_weight_norm_over_the_kernel_or_the_whole_weight_loses_channels(dim):
    """wav2vec2's positional conv: ``weight_norm(conv, dim=2)``, one norm per kernel tap."""
    model, x = _weight_normed(dim), torch.randn(2, 3, 12)
    with torch.no_grad():
        dense = model[2].weight.clone()
    small = _prune_quietly(model, x)
    wn = model[2].parametrizations.weight
    rows = wn.original1.detach().flatten(1).any(1).nonzero().flatten()
    cols = wn.original1.detach().transpose(0, 1).flatten(1).any(1).nonzero().flatten()
    assert small[2].weight.shape == (8, 2, 5) and (len(rows), len(cols)) == (8, 2)
    # independent: the dense layer's own weights. Masking v rescaled g, so the kept weights of
    # the masked layer are the dense ones, and the shrunk conv holds exactly those
    with torch.no_grad():
        masked = model[2].weight
        torch.testing.assert_close(masked[rows][:, cols], dense[rows][:, cols], rtol=1e-5, atol=0)
        assert int(torch.count_nonzero(masked)) == 8 * 2 * 5
        torch.testing.assert_close(small[2].weight, dense[rows][:, cols], rtol=1e-5, atol=0)
        assert small[2].in_channels == 8 and small[2].groups == 4


def test_weight_norm_per_output_row_keeps_its_rows_with_a_warning():
    """The default ``dim=0``: a masked row's norm would be zero and its weight 0 / 0."""
    model, x = _weight_normed(0), torch.randn(2, 3, 12)
    with torch.no_grad():
        dense = model[2].weight.clone()
    with pytest.warns(UserWarning, match=r"weight norm: a masked slice.*_weight_norm in module 2"):
        pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    v = model[2].parametrizations.weight.original1.detach()
    assert bool(v.flatten(1).any(1).all())  # every output row stays
    cols = v.transpose(0, 1).flatten(1).any(1).nonzero().flatten()
    assert len(cols) == 2  # half its inputs per group go
    small = pk.shrink(model, x)
    assert small[2].weight.shape == (16, 2, 5)
    with torch.no_grad():
        torch.testing.assert_close(small[2].weight, dense[:, cols], rtol=1e-5, atol=0)


_LOAD_WEIGHT_NORM = """
import torch
import prunekit as pk
from tests.structure.test_rules_more import _weight_normed
model = pk.load(path, model=_weight_normed(2))
with torch.no_grad():
    torch.save(model(torch.load(path + "/x.pt")), path + "/out.pt")
"""


def test_a_shrunk_weight_norm_reloads_in_a_fresh_process(tmp_path, loader):
    model, x = _weight_normed(2), torch.randn(2, 3, 12)
    small = _prune_quietly(model, x)
    pk.save(small, tmp_path)
    torch.save(x, tmp_path / "x.pt")
    loader.run(_LOAD_WEIGHT_NORM, path=tmp_path)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), small(x))
