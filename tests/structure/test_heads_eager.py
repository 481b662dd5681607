"""Head pruning of eager attention with per-head state: Bloom (fused per-head qkv rows, ALiBi
slopes) and Swinv2 (per-head logit scale, position-bias MLP rows).

Each shrunk attention module is checked against the ORIGINAL module (Hugging Face's own forward,
every head present) whose dropped heads are silenced by zeroing their output-projection columns,
on the inputs the original model feeds it; and its weights against the original rows of the
heads that the masks kept."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import prunekit as pk
from prunekit.errors import CheckpointError, TargetError
from prunekit.masks import get_mask

from .zoo import INPUTS, ZOO

pytest.importorskip("transformers")

#: zoo model -> (attention class, output projection, its head size, per-head tensors)
CASES = {
    "bloom": ("BloomAttention", "dense", 8, ()),
    "swinv2": (
        "Swinv2Attention",
        "output.dense",
        8,
        ("self.logit_scale", "self.continuous_position_bias_mlp.2.weight"),
    ),
}


def _capture(model: torch.nn.Module, cls: str) -> dict[str, tuple]:
    """The (args, kwargs) each attention module of ``model`` is called with."""
    seen: dict[str, tuple] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda m, a, k, n=n: seen.setdefault(n, (a, k)) and None, with_kwargs=True
        )
        for n, m in model.named_modules()
        if type(m).__name__ == cls
    ]
    return seen, hooks


def _kept(masked: torch.nn.Module, name: str, out: str, d: int) -> list[int]:
    mask = get_mask(masked.get_submodule(f"{name}.{out}"), "weight")
    cols = mask.any(0)  # [heads * d]
    kept = [h for h in range(len(cols) // d) if bool(cols[h * d : (h + 1) * d].all())]
    assert int(cols.sum()) == len(kept) * d  # whole heads only
    return kept


@pytest.mark.parametrize("name", sorted(CASES))
def test_shrunk_attention_equals_the_original_with_dropped_heads_silenced(name):
    cls, out, d, per_head = CASES[name]
    model, x = ZOO[name](), INPUTS[name]()
    original = copy.deepcopy(model)
    seen, hooks = _capture(original, cls)
    with torch.no_grad():  # no cache: replaying a layer must not extend it
        original(**{**x, "use_cache": False}) if isinstance(x, dict) else original(x)
    for h in hooks:
        h.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.prune(model, 0.5, granularity="head", example_inputs=x, scope="global")
    small = pk.shrink(model, x)
    counts: list[int] = []
    for attn_name, (args, kwargs) in seen.items():
        kept = _kept(model, attn_name, out, d)
        counts.append(len(kept))
        ref_mod = copy.deepcopy(original.get_submodule(attn_name))
        dense = ref_mod.get_submodule(out)
        with torch.no_grad():
            for h in set(range(dense.weight.shape[1] // d)) - set(kept):
                dense.weight[:, h * d : (h + 1) * d] = 0
            ref = ref_mod(*args, **kwargs)[0]
            got = small.get_submodule(attn_name)(*args, **kwargs)[0]
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        cols = torch.tensor([h * d + j for h in kept for j in range(d)])
        o = original.get_submodule(f"{attn_name}.{out}").weight
        assert torch.equal(small.get_submodule(f"{attn_name}.{out}").weight, o[:, cols])
        for t in per_head:
            sub, attr = t.rsplit(".", 1)
            full = getattr(original.get_submodule(f"{attn_name}.{sub}"), attr)
            got_t = getattr(small.get_submodule(f"{attn_name}.{sub}"), attr)
            assert torch.equal(got_t, full[kept])
    assert 0 < sum(counts) < len(counts) * 4  # some heads went, none of the layers is empty


def test_bloom_keeps_the_alibi_slopes_of_its_kept_heads(tmp_path, loader):
    """Layer by layer: the fused rows of the kept heads, and the model's ALiBi rows of the kept
    heads handed to the layer; a fresh process reloads the same logits from the checkpoint
    alone (config, shapes and kept-head indices)."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    model, x = ZOO["bloom"](), INPUTS["bloom"]()
    original = copy.deepcopy(model)
    pk.prune(model, 0.5, granularity="head", example_inputs=x, scope="global")
    small = pk.shrink(model, x)
    for i, block in enumerate(small.transformer.h):
        attn = block.self_attention
        kept = _kept(model, f"transformer.h.{i}.self_attention", "dense", 8)
        assert attn.num_heads == len(kept)
        rows = torch.tensor([h * 24 + j for h in kept for j in range(24)])
        full = original.transformer.h[i].self_attention.query_key_value
        assert torch.equal(attn.query_key_value.weight, full.weight[rows])
        if len(kept) == 4:  # nothing went: no indices, no hook
            assert not hasattr(attn, "alibi_heads") and not attn._forward_pre_hooks
            continue
        assert attn.alibi_heads == kept
        alibi = build_alibi_tensor(torch.ones(2, 8), 4, torch.float32)  # [2 * 4, 1, 8]
        (hook,) = attn._forward_pre_hooks.values()
        _, picked = hook(attn, (torch.randn(2, 8, 32),), {"alibi": alibi})
        assert torch.equal(picked["alibi"], alibi.view(2, 4, 1, 8)[:, kept].reshape(-1, 1, 8))
    with torch.no_grad():
        expected = small(**x).logits
    pk.save(small, tmp_path / "m")
    code = (
        "import torch; import prunekit as pk; from tests.structure.zoo import INPUTS\n"
        "m = pk.load(saved)\n"
        "torch.save(m(**INPUTS['bloom']()).logits.detach(), out)\n"
    )
    loader.run(code, saved=tmp_path / "m", out=tmp_path / "o.pt")
    assert torch.equal(torch.load(tmp_path / "o.pt"), expected)


def test_bloom_manifest_with_bad_head_indices_is_refused(tmp_path):
    import json

    model, x = ZOO["bloom"](), INPUTS["bloom"]()
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    pk.save(pk.shrink(model, x), tmp_path / "m")
    header = tmp_path / "m" / "prunekit.json"
    text = header.read_text()
    data = json.loads(text)
    entry = data["manifest"]["modules"]["transformer.h.0.self_attention"]["attrs"]
    assert entry["alibi_heads"] == sorted(entry["alibi_heads"])
    entry["alibi_heads"] = entry["alibi_heads"][::-1]
    header.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="alibi_heads"):
        pk.load(tmp_path / "m", model=ZOO["bloom"](), verify=False)


def test_bloom_slow_but_exact_is_refused_up_front():
    import transformers

    cfg = transformers.BloomConfig(
        vocab_size=64, hidden_size=32, n_layer=1, n_head=4, pretraining_tp=2, slow_but_exact=True
    )
    torch.manual_seed(0)
    model = transformers.BloomForCausalLM(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = INPUTS["bloom"]()
    with pytest.raises(TargetError, match=r"transformer\.h\.0\.self_attention.*slow_but_exact"):
        pk.prune(model, 0.5, granularity="head", example_inputs=x)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


class EagerAttention(torch.nn.Module):
    """Attention by broadcast products summed and softmax (no product-softmax-product chain for
    structure to read), or (``matmul``) by matmul and softmax; projections named so no adapter
    recognises them."""

    def __init__(self, matmul: bool = False) -> None:
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (torch.nn.Linear(16, 16) for _ in range(4))
        self.matmul, self.num_heads = matmul, 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.num_heads
        q, k, v = (f(x).view(b, t, h, 4).transpose(1, 2) for f in (self.wq, self.wk, self.wv))
        if self.matmul:
            out = torch.softmax(q @ k.transpose(-2, -1) / 2, -1) @ v  # [B, h, T, 4]
        else:
            scores = (q[:, :, :, None] * k[:, :, None]).sum(-1).softmax(-1)  # [B, h, T, S]
            out = (scores[..., None] * v[:, :, None]).sum(-2)
        return self.wo(out.transpose(1, 2).reshape(b, t, h * 4))


class TwoAttentions(torch.nn.Module):
    def __init__(self, first_matmul: bool) -> None:
        super().__init__()
        self.a, self.b = EagerAttention(first_matmul), EagerAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x + self.a(x))


def test_unreadable_attention_is_refused_by_name_or_warned_about():
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = TwoAttentions(first_matmul=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TargetError, match=r"a \(EagerAttention\), b \(EagerAttention\)"):
        pk.prune(model, 0.5, granularity="head", example_inputs=x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    mixed = TwoAttentions(first_matmul=True)  # `a` is matmul-softmax-matmul: structure reads it
    with pytest.warns(UserWarning, match=r"heads of 1 attention module\(s\) stay.*b \(Eager"):
        pk.prune(mixed, 0.5, granularity="head", example_inputs=x)
    small = pk.shrink(mixed, x)
    assert small.a.wq.out_features == 8 and small.b.wq.out_features == 16


class ScaledScores(torch.nn.Module):
    """Per-head position biases from a Linear (as Swinv2's MLP) added to attention scores, or
    (``mystery``) to a tensor made by the code."""

    def __init__(self, mystery: bool) -> None:
        super().__init__()
        self.inp, self.out = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.cpb = torch.nn.Linear(2, 4)  # one output row per head
        self.table = torch.nn.Parameter(torch.randn(5, 2))
        self.mystery = mystery

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.inp(x).view(b, t, 4, 4).transpose(1, 2)  # [B, 4, T, 4]
        scores = torch.ones(b, 4, t, t) if self.mystery else q @ q.transpose(-2, -1)
        bias = self.cpb(self.table).t()[None, :, :, None]  # [1, 4, T, 1]
        out = torch.softmax(scores + bias, -1) @ q
        return self.out(out.transpose(1, 2).reshape(b, t, 16))


@pytest.mark.parametrize("mystery", [False, True])
def test_per_head_channels_on_attention_scores_stay_without_a_gap_warning(mystery):
    """Channel pruning keeps per-head rows (heads go by head pruning): silently where they meet
    attention scores, with the "unknown origin" warning where they meet anything else."""
    torch.manual_seed(0)
    model, x = ScaledScores(mystery), torch.randn(2, 5, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    kept = [str(w.message) for w in caught if "stay unpruned" in str(w.message)]
    assert bool(kept) == mystery
    assert not mystery or "unknown origin along a channel (add in module <root>)" in kept[0]
    assert pk.shrink(model, x).cpb.out_features == 4


def test_mpnet_layers_keep_the_same_heads_as_the_shared_position_bias():
    model, x = ZOO["mpnet"](), INPUTS["mpnet"]()
    original = copy.deepcopy(model)
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    kept = [_kept(model, f"mpnet.encoder.layer.{i}.attention.attn", "o", 8) for i in range(2)]
    assert kept[0] == kept[1] and len(kept[0]) == 2
    small = pk.shrink(model, x)
    bias = original.mpnet.encoder.relative_attention_bias.weight  # [buckets, heads]
    assert torch.equal(small.mpnet.encoder.relative_attention_bias.weight, bias[:, kept[0]])
    rows = torch.tensor([h * 8 + j for h in kept[0] for j in range(8)])
    for i in range(2):
        a, b = small.mpnet.encoder.layer[i].attention.attn, original.mpnet.encoder.layer[i]
        assert torch.equal(a.k.weight, b.attention.attn.k.weight[rows])
        assert a.num_attention_heads == 2


def test_mpt_layers_keep_the_alibi_slopes_of_their_kept_heads(tmp_path, loader):
    """MPT's ALiBi ``position_bias`` ``[heads, 1, S]`` is built from the model's head count: the
    shrunk model computes what the original does with the dropped heads' output columns zeroed
    (so each layer got its kept heads' slopes), and a fresh process reloads the same logits from
    the checkpoint alone (config, shapes and kept-head indices)."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MptConfig(
        vocab_size=64, d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=16
    )
    model = transformers.MptForCausalLM(cfg).eval()
    x = {"input_ids": torch.randint(3, 64, (2, 8), generator=torch.Generator().manual_seed(2))}
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        silenced.transformer.blocks[0].attn.Wqkv.weight.mul_(3)  # layer 0 keeps more heads
        model.transformer.blocks[0].attn.Wqkv.weight.mul_(3)
    pk.prune(model, 0.5, granularity="head", example_inputs=x, scope="global")
    small = pk.shrink(model, x)
    counts = []
    for i, block in enumerate(small.transformer.blocks):
        kept = _kept(model, f"transformer.blocks.{i}.attn", "out_proj", 8)
        counts.append(len(kept))
        assert block.attn.n_heads == len(kept) and getattr(block.attn, "alibi_heads", kept) == kept
        w = silenced.transformer.blocks[i].attn.out_proj.weight
        with torch.no_grad():
            for h in set(range(4)) - set(kept):
                w[:, h * 8 : (h + 1) * 8] = 0
    assert sorted(counts) == [1, 3] and small.config.n_heads == 4
    with torch.no_grad():
        expected = small(**x).logits
        torch.testing.assert_close(expected, silenced(**x).logits, rtol=1e-5, atol=1e-6)
    pk.save(small, tmp_path / "m")
    code = (
        "import torch; import prunekit as pk\n"
        "m = pk.load(saved); ids = torch.load(ids)\n"
        "torch.save(m(input_ids=ids).logits.detach(), out)\n"
    )
    torch.save(x["input_ids"], tmp_path / "x.pt")
    loader.run(code, saved=tmp_path / "m", ids=tmp_path / "x.pt", out=tmp_path / "o.pt")
    assert torch.equal(torch.load(tmp_path / "o.pt"), expected)
