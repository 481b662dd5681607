"""Width through normalisation: LayerNorm'd residual channels go, masked == shrunk stays exact."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.masks import shrink_mask
from prunekit.structure.graph import call_model

from .zoo import INPUTS, ZOO


def test_masked_layer_norm_normalises_over_kept_channels_only():
    torch.manual_seed(0)
    norm = nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    keep = torch.rand(16) > 0.4
    x = torch.randn(5, 16) * keep  # pruned channels carry zeros, as in a masked model
    shrink_mask(norm, "weight", keep)
    shrink_mask(norm, "bias", keep)
    # independent: a LayerNorm over the kept channels alone, scattered back
    expected = torch.zeros(5, 16)
    expected[:, keep] = F.layer_norm(
        x[:, keep], (int(keep.sum()),), norm.weight[keep], norm.bias[keep], norm.eps
    )
    torch.testing.assert_close(norm(x), expected)
    assert not torch.allclose(F.layer_norm(x, (16,), norm.weight, norm.bias), expected)


def test_gpt2_hidden_width_shrinks_with_its_embeddings_norms_and_tied_head():
    model, x = ZOO["gpt2"](), INPUTS["gpt2"]()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    width = small.transformer.wte.weight.shape[1]
    assert width == 16
    assert small.transformer.wpe.weight.shape[1] == width
    assert small.transformer.ln_f.normalized_shape == (width,)
    assert small.transformer.h[0].attn.c_attn.weight.shape[0] == width
    assert small.lm_head.weight is small.transformer.wte.weight
    with torch.no_grad():
        assert small(**x).logits.shape == (2, 8, 64)  # the vocabulary stays


def test_interface_width_stays_where_it_is_the_output():
    model, x = ZOO["bert"](), INPUTS["bert"]()  # BertModel returns the hidden states
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    assert small.embeddings.word_embeddings.weight.shape[1] == 32
    assert small.encoder.layer[0].intermediate.dense.out_features == 64


_LOAD_MASKED = """
import torch
import prunekit as pk
from tests.structure.zoo import ZOO, INPUTS
model = pk.load(path, model=ZOO["vit"]())
with torch.no_grad():
    torch.save(model(INPUTS["vit"]()).logits, path + "/out.pt")
"""


def test_masked_width_survives_save_and_load_in_a_fresh_process(tmp_path, loader):
    model, x = ZOO["vit"](), INPUTS["vit"]()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    with torch.no_grad():
        expected = call_model(model, x).logits
    pk.save(model, tmp_path / "vit")
    loader.run(_LOAD_MASKED, path=tmp_path / "vit")
    got = torch.load(tmp_path / "vit" / "out.pt", weights_only=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    small = pk.shrink(model, x)
    with torch.no_grad():
        torch.testing.assert_close(small(x).logits, expected, rtol=1e-4, atol=1e-5)


def test_width_pruned_hf_folder_reloads_from_its_own_config(tmp_path):
    """pk.load(DIR) builds the model from the patched config.json: every module's copy of a
    width (LlamaDecoderLayer.hidden_size, LlamaMLP.intermediate_size) must agree with it."""
    model, x = ZOO["llama"](), INPUTS["llama"]()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    pk.save(small, tmp_path / "m")
    back = pk.load(tmp_path / "m")
    assert back.config.hidden_size < ZOO["llama"]().config.hidden_size
    with torch.no_grad():
        assert torch.equal(back(**x).logits, small(**x).logits)


def _tiny(cls_name: str, config_name: str, **cfg):
    import transformers

    torch.manual_seed(0)
    return getattr(transformers, cls_name)(getattr(transformers, config_name)(**cfg)).eval()


def test_width_pruned_model_whose_config_derives_attention_width_reloads(tmp_path):
    """BERT and Longformer size their attention by ``hidden_size``: a config with the narrowed
    width would rebuild narrower q/k/v than the shrunk model holds, so the width stays in the
    config and the shape manifest narrows the rebuilt model; pk.load(DIR) gives the same
    logits. Longformer's self-attention also learns its narrowed input width."""
    x = {"input_ids": torch.randint(3, 64, (2, 16), generator=torch.Generator().manual_seed(0))}
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64)  # fmt: skip
    for name, model in [
        ("bert", _tiny("BertForSequenceClassification", "BertConfig", **common)),
        ("longformer", _tiny("LongformerForMaskedLM", "LongformerConfig", attention_window=4,
                             **common)),
    ]:  # fmt: skip
        pk.prune(model, 0.5, granularity="channel", example_inputs=x)
        small = pk.shrink(model, x)
        assert small.get_input_embeddings().embedding_dim == 16
        assert small.config.hidden_size == 32
        pk.save(small, tmp_path / name)
        back = pk.load(tmp_path / name)
        with torch.no_grad():
            assert torch.equal(back(**x).logits, small(**x).logits), name


def test_width_pruned_model_whose_narrowed_config_does_not_build_reloads(tmp_path):
    """Reformer's axial position widths must sum to ``hidden_size``: channel pruning narrows one
    axis's table, so a config with the narrowed hidden width fails to build. The config keeps
    the width it had, and pk.load(DIR) rebuilds the model from it plus the shape manifest (its
    LSH layers draw random rotations: call_model seeds each call)."""
    model, x = ZOO["reformer"](), INPUTS["reformer"]()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    assert small.get_input_embeddings().embedding_dim < 32
    assert small.config.hidden_size == 32
    pk.save(small, tmp_path / "m")
    back = pk.load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(call_model(back, x).logits, call_model(small, x).logits)
