"""Shrunk Hugging Face models load with plain transformers when their config can describe them."""

from __future__ import annotations

import warnings

import pytest
import torch

import prunekit as pk
from prunekit.formats.config_fit import describes

from .plain_load import reload_matches
from .zoo import INPUTS, LLAMA_LIKE, ZOO

transformers = pytest.importorskip("transformers")


def _width_and_heads(name: str, granularities=("channel", "head")):
    model, x = ZOO[name](), INPUTS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for granularity in granularities:
            pk.prune(model, 0.5, granularity=granularity, example_inputs=x)
            model = pk.shrink(model, x)
    return model, x


@pytest.mark.parametrize(
    ("name", "granularities", "hidden"),
    [("llama", ("channel", "head"), 16), ("mistral", ("channel", "head"), 16),
     ("qwen3", ("head",), 32)],
)  # fmt: skip
def test_uniform_results_load_in_plain_transformers(name, granularities, hidden, tmp_path):
    small, x = _width_and_heads(name, granularities)
    assert small.config.hidden_size == hidden and small.config.num_attention_heads == 2
    assert describes(small)
    reload_matches(small, tmp_path / "hf", x["input_ids"], new_tokens=4)


def test_dense_export_loads_and_pk_load_patches_the_config(tmp_path):
    small, x = _width_and_heads("llama")
    pk.save(small, tmp_path / "out", dense=True)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    again = pk.load(tmp_path / "out", model=ZOO["llama"]())
    assert again.config.hidden_size == 16 and again.config.num_attention_heads == 2
    assert again.config.intermediate_size == small.config.intermediate_size
    with torch.no_grad():
        ref = small(**x).logits
        torch.testing.assert_close(loaded(**x).logits, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(again(**x).logits, ref, rtol=0, atol=1e-6)


def test_the_default_save_of_a_shrunk_model_is_the_plain_file(tmp_path):
    """format="auto" gains next to nothing on a shrunk model's dense weights: it writes
    model.safetensors, which plain transformers loads, instead of prunekit.safetensors."""
    small, x = _width_and_heads("llama")
    pk.save(small, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "model.safetensors", "prunekit.json"
    ]  # fmt: skip
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, small(**x).logits, rtol=0, atol=1e-6)


def test_rms_norms_of_two_widths_cannot_share_one_config_eps():
    small, _ = _width_and_heads("qwen3")  # stream norms over 16 of 32, q/k norms over 8 of 8
    assert not describes(small)


def test_a_config_that_cannot_describe_the_model_warns_on_dense_export(tmp_path):
    model, x = ZOO["gpt2"](), INPUTS["gpt2"]()
    pk.prune(model, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)  # hidden width 16, attention width 32: GPT-2 ties the two
    assert not describes(small)
    with pytest.warns(UserWarning, match="plain transformers"):
        pk.save(small, tmp_path / "gpt2", dense=True)


def _llama(layers: int = 4):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**LLAMA_LIKE, "num_hidden_layers": layers})
    return transformers.LlamaForCausalLM(cfg).eval()


def _widths(model) -> set[tuple[int, int]]:
    """(MLP width, query rows) of every block."""
    return {
        (b.mlp.up_proj.out_features, b.self_attn.q_proj.out_features) for b in model.model.layers
    }


def test_global_scope_is_uneven_unless_uniform():
    x = INPUTS["llama"]()
    widths, mlp = {}, {}
    for uniform in (False, True):
        model = _llama()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for granularity in ("channel", "head"):
                gran = {"type": granularity, "uniform": uniform}
                pk.prune(model, 0.5, granularity=gran, scope="global", example_inputs=x)
                model = pk.shrink(model, x)
        widths[uniform] = _widths(model)
        mlp[uniform] = [b.mlp.up_proj.out_features for b in model.model.layers]
    assert len(widths[False]) > 1 and len(widths[True]) == 1
    # the same allocation, then every MLP loses the mean of what the uneven ones lost
    removed = [128 - w for w in mlp[False]]
    assert mlp[True] == [128 - round(sum(removed) / len(removed))] * 4


def test_llama_by_width_heads_and_depth_uniform_loads_in_plain_transformers(tmp_path):
    """The issue's target: channel, head and layer pruning one after the other under global
    scope with ``uniform``, shrunk to half the parameters, written by save_pretrained."""
    model, x = _llama(), INPUTS["llama"]()
    before = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for gran in ({"type": "channel", "uniform": True}, {"type": "head", "uniform": True}):
            pk.prune(model, 0.5, granularity=gran, scope="global", example_inputs=x)
            model = pk.shrink(model, x)
        pk.prune(model, 0.5, granularity="layer", example_inputs=x)
        model = pk.shrink(model, x)
    assert sum(p.numel() for p in model.parameters()) <= 0.5 * before
    assert len(model.model.layers) == 2 and len(_widths(model)) == 1
    assert describes(model)
    ids = x["input_ids"]
    loaded, tokens = reload_matches(model, tmp_path / "hf", ids, new_tokens=6)
    assert type(loaded) is transformers.LlamaForCausalLM
    assert tokens.shape[1] == ids.shape[1] + 6


def test_width_only_keeps_the_config_head_size(tmp_path):
    """Heads untouched, hidden width halved: the config must still give the real head size."""
    small, x = _width_and_heads("llama", ("channel",))
    assert small.config.hidden_size == 16 and small.config.num_attention_heads == 4
    small.save_pretrained(tmp_path / "hf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, small(**x).logits, rtol=0, atol=1e-6)


def test_the_hidden_width_stays_a_count_the_config_accepts(tmp_path):
    """LlamaConfig requires hidden_size % num_attention_heads == 0: 30% of 32 channels would
    keep 22 (or 23), so the hidden width keeps 24 and plain transformers loads the result."""
    model, x = _llama(2), INPUTS["llama"]()
    pk.prune(model, 0.3, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    assert small.config.hidden_size == 24 and describes(small)
    assert {b.mlp.up_proj.out_features for b in small.model.layers} == {90}  # 128 - 38: as asked
    reload_matches(small, tmp_path / "hf", x["input_ids"], new_tokens=4)


def test_a_width_the_config_refuses_stays_out_of_it_and_reloads(tmp_path, monkeypatch):
    """Without the rounding the hidden width is 22, which LlamaConfig's validators refuse:
    the config keeps 32, so pk.load rebuilds the model and narrows it from the manifest
    (exact), save_pretrained writes a valid config, and plain transformers refuses the weights
    rather than load them wrongly; pk.save says so."""
    monkeypatch.setattr("prunekit.structure.hf_config.mark_hidden_width", lambda *a: None)
    model, x = _llama(2), INPUTS["llama"]()
    pk.prune(model, 0.3, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    assert small.model.embed_tokens.embedding_dim == 22 and small.config.hidden_size == 32
    assert not describes(small)
    with pytest.warns(UserWarning, match="plain transformers refuses"):
        pk.save(small, tmp_path / "pk")
    loaded = pk.load(tmp_path / "pk")
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, small(**x).logits)
    small.save_pretrained(tmp_path / "hf")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
