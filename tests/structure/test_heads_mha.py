"""Head pruning of ``nn.MultiheadAttention``: the shrunk module against torch's own attention
with the same heads silenced, and the pruned slices against the original weights."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.masks import get_mask
from prunekit.structure.mha import HeadPrunedMultiheadAttention

from .zoo import INPUTS, ZOO

E, H, D = 16, 4, 4
KEPT = [0, 2]


def _keep_rows(t: torch.Tensor, dim: int, per: int) -> torch.Tensor:
    """Rows of heads KEPT (``per`` consecutive positions per head, blocks of H heads)."""
    blocks = t.shape[dim] // (H * D)
    idx = [b * H * D + h * D + j for b in range(blocks) for h in KEPT for j in range(per)]
    return t.index_select(dim, torch.tensor(idx))


def _pruned_by_hand(m: nn.MultiheadAttention) -> nn.MultiheadAttention:
    """A copy of ``m`` holding only heads KEPT, sliced here (not by prunekit)."""
    p = copy.deepcopy(m)
    with torch.no_grad():
        for name, t in list(p.named_parameters(recurse=False)):
            dim = 2 if name in ("bias_k", "bias_v") else 0
            setattr(p, name, nn.Parameter(_keep_rows(t, dim, D)))
        p.out_proj.weight = nn.Parameter(_keep_rows(p.out_proj.weight, 1, D))
    p.num_heads = len(KEPT)
    p.__class__ = HeadPrunedMultiheadAttention
    return p


def _silenced(m: nn.MultiheadAttention) -> nn.MultiheadAttention:
    """``m`` (torch's own forward) with the output columns of the dropped heads zeroed."""
    s = copy.deepcopy(m)
    with torch.no_grad():
        for h in set(range(H)) - set(KEPT):
            s.out_proj.weight[:, h * D : (h + 1) * D] = 0
    return s


VARIANTS = {
    "batch_first": ({"batch_first": True}, {}),
    "seq_first": ({}, {}),
    "kdim_vdim": ({"batch_first": True, "kdim": 6, "vdim": 5}, {}),
    "bias_kv_zero_attn": ({"batch_first": True, "add_bias_kv": True, "add_zero_attn": True}, {}),
    "no_bias": ({"batch_first": True, "bias": False}, {}),
    "masks": ({"batch_first": True}, {"masks": True}),
    "causal": ({"batch_first": True}, {"causal": True}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_matches_torch_with_the_dropped_heads_silenced(variant):
    kw, extra = VARIANTS[variant]
    torch.manual_seed(0)
    m = nn.MultiheadAttention(E, H, **kw).eval()
    g = torch.Generator().manual_seed(1)
    b, n, s = 3, 5, 7
    first = kw.get("batch_first", False)

    def x(length: int, width: int) -> torch.Tensor:
        shape = (b, length, width) if first else (length, b, width)
        return torch.randn(shape, generator=g)

    q, k, v = x(n, E), x(s, kw.get("kdim", E)), x(s, kw.get("vdim", E))
    call = {}
    if extra.get("masks"):
        call["attn_mask"] = torch.rand(n, s, generator=g) < 0.3
        call["attn_mask"][:, 0] = False  # every query sees a key
        call["key_padding_mask"] = torch.zeros(b, s, dtype=torch.bool)
        call["key_padding_mask"][0, -2:] = True
    if extra.get("causal"):
        k, v, s = q, q, n
        call["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(n)
        call["is_causal"] = True
    pruned, reference = _pruned_by_hand(m), _silenced(m)
    with torch.no_grad():
        out, _ = pruned(q, k, v, need_weights=False, **call)
        ref, ref_w = reference(q, k, v, average_attn_weights=False, **call)
        out_w, w = pruned(q, k, v, average_attn_weights=False, **call)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_w, ref, rtol=1e-5, atol=1e-6)
    # per-head weights of the kept heads are torch's weights of those heads
    torch.testing.assert_close(w, ref_w[:, KEPT], rtol=1e-5, atol=1e-6)
    assert pruned.state_dict().keys() == m.state_dict().keys()


def test_unbatched_input_and_mean_weights():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(E, H).eval()
    x = torch.randn(5, E)
    pruned = _pruned_by_hand(m)
    with torch.no_grad():
        out, w = pruned(x, x, x)
        ref, ref_w = _silenced(m)(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, ref_w[KEPT].mean(0), rtol=1e-5, atol=1e-6)


def test_pk_shrink_keeps_the_unmasked_heads_rows_and_reloads(tmp_path):
    model, x = ZOO["mha"](), INPUTS["mha"]()
    original = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.prune(model, 0.5, granularity="head", example_inputs=x)
    cols = get_mask(model.attn.out_proj, "weight").any(0)  # [32]: columns still alive
    kept = [h for h in range(4) if bool(cols[h * 8 : (h + 1) * 8].all())]
    assert len(kept) == 2 and int(cols.sum()) == 16  # two whole heads of size 8
    small = pk.shrink(model, x)
    attn = small.attn
    assert type(attn) is HeadPrunedMultiheadAttention and attn.num_heads == 2
    rows = torch.tensor([c * 32 + h * 8 + j for c in range(3) for h in kept for j in range(8)])
    a = original.attn
    assert torch.equal(attn.in_proj_weight, a.in_proj_weight[rows])
    assert torch.equal(attn.in_proj_bias, a.in_proj_bias[rows])
    assert torch.equal(attn.out_proj.weight, a.out_proj.weight[:, rows[:16]])
    with torch.no_grad():
        expected = small(x)
    pk.save(small, tmp_path / "m")
    loaded = pk.load(tmp_path / "m", model=ZOO["mha"]())
    assert type(loaded.attn) is HeadPrunedMultiheadAttention
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
