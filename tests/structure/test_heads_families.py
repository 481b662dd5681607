"""Hugging Face attention read by structure where an adapter adds what structure cannot tell, or
served by an adapter: SqueezeBERT (1x1-convolution projections, one group here; grouped q/k/v in
test_heads_squeezebert.py), LeViT (values wider than keys, per-head biases gathered by position and
cached by an eval forward), ProphetNet's attention (n-gram self-attention in
test_heads_prophetnet.py), LED's decoder and Longformer's sliding-window attention with global
tokens (LED's encoder): adapters whose forward merges fewer heads than the input width.

Each shrunk model is checked against the ORIGINAL model whose dropped heads are silenced by zeroing
their output-projection columns (no prunekit code runs on it), and reloaded in a fresh process from
the checkpoint alone (its config and shape manifest)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import prunekit as pk
from prunekit.masks import get_mask
from prunekit.structure.graph import call_model

from .zoo import INPUTS, ZOO

transformers = pytest.importorskip("transformers")


def _squeezebert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.SqueezeBertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, embedding_size=32, q_groups=1, k_groups=1, v_groups=1,
        num_labels=3,
    )  # fmt: skip
    return transformers.SqueezeBertForSequenceClassification(cfg).eval()


def _levit() -> torch.nn.Module:
    model = ZOO["levit"]()
    with torch.no_grad():  # biases that differ per head and position (they start at zero)
        for m in model.modules():
            if hasattr(m, "attention_biases"):
                m.attention_biases.normal_(generator=torch.Generator().manual_seed(3))
    return model


def _prophetnet() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.ProphetNetConfig(
        vocab_size=64, hidden_size=32, encoder_ffn_dim=64, num_encoder_layers=2,
        num_encoder_attention_heads=4, decoder_ffn_dim=64, num_decoder_layers=1,
        num_decoder_attention_heads=4, max_position_embeddings=64, num_buckets=8,
        relative_max_distance=16,
    )  # fmt: skip
    return transformers.ProphetNetForConditionalGeneration(cfg).eval()


def _led() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LEDConfig(
        vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, attention_window=4,
        max_encoder_position_embeddings=64, max_decoder_position_embeddings=64,
    )  # fmt: skip
    return transformers.LEDForConditionalGeneration(cfg).eval()


def _longformer(dropout: float = 0.1) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LongformerConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, attention_window=4, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    return transformers.LongformerForMaskedLM(cfg).eval()


def _long_inputs() -> dict:
    """11 tokens (the model pads them to a multiple of the window), the second sequence padded
    after 8, global attention on one token of the first and two of the second."""
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 8:] = 0
    global_mask = torch.zeros(2, 11, dtype=torch.long)
    global_mask[0, 0] = global_mask[1, 0] = global_mask[1, 3] = 1
    return {
        "input_ids": torch.randint(3, 64, (2, 11), generator=g),
        "attention_mask": mask,
        "global_attention_mask": global_mask,
    }


def _led_inputs() -> dict:
    return {**_long_inputs(), "decoder_input_ids": _seq2seq()["decoder_input_ids"]}


def _seq2seq() -> dict:
    g = torch.Generator().manual_seed(2)
    return {
        "input_ids": torch.randint(3, 64, (2, 8), generator=g),
        "decoder_input_ids": torch.randint(3, 64, (2, 5), generator=g),
    }


#: name -> (factory, inputs, the attention modules' class (or classes))
CASES = {
    # encoder self-attention, decoder cross-attention and n-gram self-attention
    "prophetnet": (
        _prophetnet,
        _seq2seq,
        ("ProphetNetAttention", "ProphetNetNgramSelfAttention"),
    ),
    # decoder self- and cross-attention, and the encoder's Longformer attention
    "led": (_led, _seq2seq, ("LEDDecoderAttention", "LEDEncoderAttention")),
    # the encoder's with padding and global tokens
    "led_global": (_led, _led_inputs, ("LEDDecoderAttention", "LEDEncoderAttention")),
    "longformer": (_longformer, _long_inputs, "LongformerAttention"),
    "squeezebert": (_squeezebert, INPUTS["bert"], "SqueezeBertSelfAttention"),
    "levit": (_levit, INPUTS["levit"], "LevitAttention"),
}


def _holder(attn: torch.nn.Module) -> torch.nn.Module:
    """The module holding the head count: Longformer's self-attention inside its parent."""
    return getattr(attn, "longformer_self_attn", None) or getattr(attn, "self", None) or attn


def _projection(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, int]:
    """The output projection's Linear of attention module ``name`` and its columns per head."""
    attn = model.get_submodule(name)
    if hasattr(attn, "longformer_self_attn"):  # LED's encoder
        return attn.output, attn.longformer_self_attn.head_dim
    if hasattr(attn, "self"):  # Longformer
        return attn.output.dense, attn.self.head_dim
    if hasattr(attn, "attention_biases"):  # LeViT: projection = Hardswish, then a BN-linear
        return attn.projection.linear, attn.attention_ratio * attn.key_dim
    if hasattr(attn, "out_proj"):  # ProphetNet
        return attn.out_proj, attn.head_dim
    layer = model.get_submodule(name.rsplit(".", 1)[0])  # SqueezeBERT: the parent block's conv
    return layer.post_attention.conv1d, attn.attention_head_size


_RELOAD = """
import torch
import prunekit as pk
from prunekit.structure.graph import call_model
x, ref = torch.load(expected)
m = pk.load(saved).eval()  # config + shape manifest alone
with torch.no_grad():
    assert torch.equal(call_model(m, x)[0], ref)
"""


def _reload_in_fresh_process(loader, small, x, tmp_path) -> None:
    """Save ``small``; the loader process loads it and gets the same first output on ``x``."""
    pk.save(small, tmp_path / "m")
    with torch.no_grad():
        torch.save((x, call_model(small, x)[0]), tmp_path / "expected.pt")
    loader.run(_RELOAD, saved=tmp_path / "m", expected=tmp_path / "expected.pt")


@pytest.mark.parametrize("name", sorted(CASES))
def test_heads_found_by_structure_with_what_it_cannot_tell(name, tmp_path, loader):
    build, inputs, cls = CASES[name]
    model, x = build(), inputs()
    with torch.no_grad():
        call_model(model, x)  # an eval forward first: LeViT caches its gathered biases
    original = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pk.prune(model, 0.5, granularity="head", example_inputs=x)
    told = [str(w.message) for w in caught if "stay" in str(w.message)]
    assert not told, told  # every head of these attentions can go
    small = pk.shrink(model, x)
    attns = [n for n, m in model.named_modules() if type(m).__name__.startswith(cls)]
    assert attns
    silenced = copy.deepcopy(original)
    for n in attns:
        proj, width = _projection(model, n)
        live = get_mask(proj, "weight").reshape(proj.weight.shape[0], -1, width).any(0).any(1)
        heads = len(live)
        kept = torch.nonzero(live).flatten()
        assert len(kept) == heads // 2  # 50% of every layer's heads
        cols = torch.cat([torch.arange(h * width, (h + 1) * width) for h in kept.tolist()])
        small_proj = _projection(small, n)[0]
        assert torch.equal(small_proj.weight, _projection(original, n)[0].weight[:, cols])
        attn = _holder(small.get_submodule(n))
        count = next(
            getattr(attn, a)
            for a in ("num_attention_heads", "num_attn_heads", "num_heads")
            if hasattr(attn, a)
        )
        assert count == len(kept)
        if hasattr(attn, "query_global"):  # Longformer: the kept heads' global rows too
            rows = torch.cat([torch.arange(h * width, (h + 1) * width) for h in kept.tolist()])
            was = _holder(original.get_submodule(n))
            for p in ("query_global", "key_global", "value_global"):
                assert torch.equal(getattr(attn, p).bias, getattr(was, p).bias[rows])
        if hasattr(attn, "attention_biases"):  # the kept heads' bias rows, not the cached ones
            assert torch.equal(
                attn.attention_biases, original.get_submodule(n).attention_biases[kept]
            )
        with torch.no_grad():
            w = _projection(silenced, n)[0].weight
            w.view(w.shape[0], heads, width, -1)[:, ~live] = 0
    with torch.no_grad():
        expected, got = call_model(silenced, x)[0], call_model(small, x)[0]
        before = call_model(original, x)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, before, atol=1e-4)  # heads really went
    _reload_in_fresh_process(loader, small, x, tmp_path)
    if isinstance(x, dict) and "decoder_input_ids" in x:  # the replaced forwards' cache paths
        kw = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "num_beams": 1}
        with torch.no_grad():
            expected_ids = silenced.generate(x["input_ids"], **kw)
            assert torch.equal(small.generate(x["input_ids"], **kw), expected_ids)


def test_longformer_forward_is_the_original_in_train_mode():
    """The forward given to pruned Longformer attention, on unpruned heads, equals the original
    in train mode (attention dropout drawn in the same order), with padding, global tokens and
    the local and global attention probabilities returned."""
    from prunekit.structure.heads import pruned_class
    from prunekit.structure.longformer import _forward

    model, x = _longformer(dropout=0.3).train(), _long_inputs()
    replaced = copy.deepcopy(model)
    for m in replaced.modules():
        if type(m).__name__ == "LongformerSelfAttention":
            m.__class__ = pruned_class(type(m), _forward)
    outs = []
    for m in (model, replaced):
        torch.manual_seed(5)
        outs.append(m(**x, output_attentions=True))
    for key in ("logits", "attentions", "global_attentions"):
        a, b = outs[0][key], outs[1][key]
        a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True)), key
    torch.manual_seed(6)
    assert not torch.equal(replaced(**x).logits, outs[1].logits)  # dropout really draws
