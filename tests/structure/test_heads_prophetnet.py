"""Heads of ProphetNet's decoder n-gram self-attention, whose predict streams take their relative
position biases from other heads' rows of ``relative_pos_embeddings`` (so the table stays whole).

Checked against the ORIGINAL model (no prunekit code runs on it): the kept heads' attention
probabilities of both streams, which hold their relative biases; the whole model's outputs with
the dropped heads silenced (zeroed ``out_proj`` columns), exactly; plain ``transformers``
refusing the ``save_pretrained`` folder (its config cannot say which heads stay); and a reload
in a fresh process from the checkpoint alone. Generation with a cache runs in
``test_heads_families``."""

from __future__ import annotations

import copy

import pytest
import torch

import prunekit as pk
from prunekit.masks import get_mask

from .test_heads_families import _prophetnet, _seq2seq

transformers = pytest.importorskip("transformers")
ATTN = "prophetnet.decoder.layers.0.self_attn"


def _attentions(model: torch.nn.Module, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The first decoder layer's main [B, H, S, S] and predict [B, ngram, H, S, 2S] stream
    attention probabilities."""
    with torch.no_grad():
        out = model(**x, output_attentions=True)
    return out.decoder_attentions[0], out.decoder_ngram_attentions[0]


def test_predict_streams_mix_the_heads_of_the_bias_table():
    """Why the table stays whole: changing one head's rows of ``relative_pos_embeddings`` (its
    output ``bucket * H + head``) changes the predict-stream attention of other heads, while the
    main stream's stays per head."""
    model, x = _prophetnet(), _seq2seq()
    main, predict = _attentions(model, x)
    table = model.get_submodule(ATTN).relative_pos_embeddings
    heads = table.out_features // 8  # num_buckets
    with torch.no_grad():
        table.bias.view(8, heads)[:, 0] += 1.0 + torch.arange(8.0)  # head 0's rows only
    main2, predict2 = _attentions(model, x)
    assert torch.equal(main[:, 1:], main2[:, 1:]) and not torch.equal(main[:, 0], main2[:, 0])
    assert not torch.equal(predict[:, :, 1:], predict2[:, :, 1:])


_RELOAD = """
import torch
import prunekit as pk
x, ref = torch.load(expected)
m = pk.load(saved).eval()  # config + shape manifest alone
assert m.get_submodule(attn).bias_heads == kept
with torch.no_grad():
    assert torch.equal(m(**x).logits, ref)
"""


def test_ngram_heads_keep_their_biases_masked_equals_shrunk_and_reload(tmp_path, loader):
    model, x = _prophetnet(), _seq2seq()
    original = copy.deepcopy(model)
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    small = pk.shrink(model, x)

    proj = model.get_submodule(ATTN).out_proj
    live = get_mask(proj, "weight").reshape(proj.weight.shape[0], 4, -1).any(0).any(1)
    kept = torch.nonzero(live).flatten()
    assert len(kept) == 2
    attn = small.get_submodule(ATTN)
    assert attn.num_attn_heads == 2
    assert attn.relative_pos_embeddings.out_features == 8 * 4  # the table of every head
    # the kept heads' attention in both streams (scores + relative bias + mask) is the original's
    main, predict = _attentions(original, x)
    small_main, small_predict = _attentions(small, x)
    torch.testing.assert_close(small_main, main[:, kept], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(small_predict, predict[:, :, kept], rtol=1e-6, atol=1e-7)

    silenced = copy.deepcopy(original)  # the dropped heads' output columns zeroed, nothing else
    for name, m in silenced.named_modules():
        if hasattr(m, "out_proj") and hasattr(m, "num_attn_heads"):
            mask = get_mask(model.get_submodule(name).out_proj, "weight")
            with torch.no_grad():
                m.out_proj.weight.mul_(mask)
    with torch.no_grad():
        expected, got = silenced(**x).logits, small(**x).logits
        masked = model(**x).logits
    assert torch.equal(got, expected) and torch.equal(got, masked)

    small.save_pretrained(tmp_path / "hf")  # its config has all heads: plain loading refuses
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        transformers.ProphetNetForConditionalGeneration.from_pretrained(tmp_path / "hf")

    pk.save(small, tmp_path / "m")
    torch.save((x, got), tmp_path / "expected.pt")
    loader.run(
        _RELOAD,
        expected=tmp_path / "expected.pt",
        saved=tmp_path / "m",
        attn=ATTN,
        kept=kept.tolist(),
    )


def test_ngram_forward_is_the_original_in_train_mode():
    """The forward given to pruned n-gram attention, keeping every head, equals the original in
    train mode (attention dropout drawn in the same order), attention probabilities included."""
    from prunekit.structure.heads import pruned_class
    from prunekit.structure.prophetnet_ngram import _forward

    model, x = _prophetnet().train(), _seq2seq()
    replaced = copy.deepcopy(model)
    attn = replaced.get_submodule(ATTN)
    attn.bias_heads = list(range(4))
    attn.__class__ = pruned_class(type(attn), _forward)
    outs = []
    for m in (model, replaced):
        torch.manual_seed(5)
        outs.append(m(**x, output_attentions=True))
    for key in ("logits", "logits_ngram", "decoder_attentions", "decoder_ngram_attentions"):
        a, b = outs[0][key], outs[1][key]
        a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True)), key
    torch.manual_seed(6)
    assert not torch.equal(replaced(**x).logits, outs[1].logits)  # dropout really draws
