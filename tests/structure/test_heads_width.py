"""Head pruning of attention whose forward merges the heads to a width it does not take from
its heads: XGLM (its ``embed_dim`` reshapes the heads' output), PVTv2 (the input's width) and
WavLM (torch's ``multi_head_attention_forward`` with q/k/v/out weights and a gated relative
position bias with per-head parameters).

The shrunk model is checked against the ORIGINAL model whose dropped heads are silenced by
zeroing their output-projection columns (Hugging Face's own forward, every head present), its
weights against the original slices of the kept heads, and its checkpoint against a reload in a
fresh process."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import prunekit as pk
from prunekit.masks import get_mask
from prunekit.structure.graph import call_model

pytest.importorskip("transformers")

_AUDIO = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 64, "conv_dim": (16, 16), "conv_stride": (5, 2),
          "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16,
          "num_conv_pos_embedding_groups": 4, "num_buckets": 8,
          "max_bucket_distance": 16}  # fmt: skip

#: name -> (model class, config, inputs, attention class, output projection, per-head slices
#: (path -> (dim, rows per head)), the output tensor)
CASES = {
    "xglm": (
        "XGLMForCausalLM",
        {"vocab_size": 64, "d_model": 32, "num_layers": 2, "attention_heads": 4, "ffn_dim": 64},
        lambda g: {"input_ids": torch.randint(3, 64, (2, 8), generator=g)},
        "XGLMAttention", "out_proj",
        {"q_proj.weight": (0, 8), "q_proj.bias": (0, 8), "k_proj.weight": (0, 8),
         "v_proj.bias": (0, 8)},
        "logits",
    ),
    "pvt_v2": (
        "PvtV2Model",
        {"num_encoder_blocks": 2, "depths": [1, 1], "hidden_sizes": [16, 32],
         "num_attention_heads": [2, 4], "mlp_ratios": [2, 2], "image_size": 32,
         "sr_ratios": [2, 1], "patch_sizes": [7, 3], "strides": [4, 2]},
        lambda g: torch.randn(2, 3, 32, 32, generator=g),
        "PvtV2SelfAttention", "proj",
        {"query.weight": (0, 8), "key.bias": (0, 8), "value.weight": (0, 8)},
        "last_hidden_state",
    ),
    "wavlm": (
        "WavLMModel", _AUDIO, lambda g: {  # the second waveform padded: a key padding mask
            "input_values": torch.randn(2, 400, generator=g),
            "attention_mask": (torch.arange(400) < torch.tensor([[400], [250]])).long(),
        },
        "WavLMAttention", "out_proj",
        {"q_proj.weight": (0, 8), "k_proj.bias": (0, 8), "v_proj.weight": (0, 8),
         "gru_rel_pos_const": (1, 1), "rel_attn_embed.weight": (1, 1)},
        "last_hidden_state",
    ),
}  # fmt: skip


def _build(name: str):
    import transformers

    model_cls, cfg, inputs, *_ = CASES[name]
    torch.manual_seed(0)
    cls = getattr(transformers, model_cls)
    model = cls(cls.config_class(**cfg)).eval()
    with torch.no_grad():  # first layer louder: a global ranking keeps more of its heads
        for p in next(
            m for m in model.modules() if type(m).__name__ == CASES[name][3]
        ).parameters():
            p.mul_(3)
    return model, inputs(torch.Generator().manual_seed(0))


def _kept(masked: torch.nn.Module, name: str, out: str, d: int = 8) -> list[int]:
    layer = masked.get_submodule(f"{name}.{out}")
    mask = get_mask(layer, "weight")
    if mask is None:  # no head of this layer was pruned
        return list(range(layer.weight.shape[1] // d))
    cols = mask.any(0)  # [heads * d]
    kept = [h for h in range(len(cols) // d) if bool(cols[h * d : (h + 1) * d].all())]
    assert int(cols.sum()) == len(kept) * d  # whole heads only
    return kept


def _slices(t: torch.Tensor, dim: int, rows: int, kept: list[int]) -> torch.Tensor:
    idx = torch.cat([torch.arange(h * rows, (h + 1) * rows) for h in kept])
    return t.index_select(dim, idx)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shrunk_model_equals_the_original_with_dropped_heads_silenced(name, tmp_path, loader):
    *_, cls, out, per_head, field = CASES[name]
    model, x = _build(name)
    original, silenced = copy.deepcopy(model), copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.prune(model, 0.5, granularity="head", example_inputs=x, scope="global")
    small = pk.shrink(model, x)
    kept_sets, total = [], 0
    for attn, module in original.named_modules():
        if type(module).__name__ != cls:
            continue
        kept = _kept(model, attn, out)
        kept_sets.append(kept)
        w = silenced.get_submodule(f"{attn}.{out}").weight
        total += w.shape[1] // 8
        with torch.no_grad():
            for h in set(range(w.shape[1] // 8)) - set(kept):
                w[:, h * 8 : (h + 1) * 8] = 0
        got = small.get_submodule(attn)
        assert torch.equal(
            got.get_submodule(out).weight, _slices(module.get_submodule(out).weight, 1, 8, kept)
        )
        for path, (dim, rows) in per_head.items():
            sub, _, attr = path.rpartition(".")
            if sub and not hasattr(module, sub):  # WavLM: the bucket table of layer 0 only
                continue
            full = getattr(module.get_submodule(sub) if sub else module, attr)
            mine = getattr(got.get_submodule(sub) if sub else got, attr)
            assert torch.equal(mine, _slices(full, dim, rows, kept)), path
        assert getattr(got, "num_heads", getattr(got, "num_attention_heads", None)) == len(kept)
        if name == "wavlm":  # the gate's projection is shared by the heads: it stays whole
            for p in ("weight", "bias"):
                full = getattr(module.gru_rel_pos_linear, p)
                assert torch.equal(getattr(got.gru_rel_pos_linear, p), full)
    assert sum(map(len, kept_sets)) == total // 2  # half of all heads
    if name == "wavlm":  # every layer reuses the first layer's position bias: the same heads
        assert kept_sets[0] == kept_sets[1]
    else:  # the louder first layer keeps more
        assert len(kept_sets[0]) > len(kept_sets[1])
    with torch.no_grad():
        ref = getattr(call_model(silenced, x), field)
        mine = getattr(call_model(small, x), field)
        dense = getattr(call_model(original, x), field)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mine, dense, atol=1e-3)

    pk.save(small, tmp_path / "m")
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import torch; import prunekit as pk; from prunekit.structure.graph import call_model\n"
        "m = pk.load(saved).eval(); x = torch.load(inputs)\n"
        "torch.save(getattr(call_model(m, x), field).detach(), out)\n"
    )
    loader.run(
        code, saved=tmp_path / "m", inputs=tmp_path / "x.pt", field=field, out=tmp_path / "o.pt"
    )
    assert torch.equal(torch.load(tmp_path / "o.pt"), mine)
