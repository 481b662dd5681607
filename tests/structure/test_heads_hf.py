"""Head-pruned encoder-decoder, speech, audio and vision models and plain ``transformers``: a
config that can describe the heads is patched and ``from_pretrained`` computes the same logits;
one that cannot (the head size is ``width // heads``) makes ``from_pretrained`` refuse the
checkpoint by its shapes, never load it wrongly, and prunekit's dense export warns."""

from __future__ import annotations

import warnings

import pytest
import torch

import prunekit as pk
from prunekit.formats.config_fit import describes
from prunekit.structure.graph import call_model

from .zoo import INPUTS, ZOO

transformers = pytest.importorskip("transformers")


def _heads(name: str):
    model, x = ZOO[name](), INPUTS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.prune(model, 0.5, granularity="head", example_inputs=x)  # per layer: uniform
    return pk.shrink(model, x), x


def _logits(model, x):
    with torch.no_grad():
        return call_model(model.eval(), x).logits


@pytest.mark.parametrize(
    "name", ["t5", "deit", "beit", "dinov2", "phi3", "gemma", "mixtral", "funnel"]
)
def test_uniform_heads_load_in_plain_transformers(name, tmp_path):
    """Configs with a head-size field (``head_dim``; T5's ``d_kv``; Funnel's ``d_head``) take
    the new counts."""
    small, x = _heads(name)
    config = small.config
    assert getattr(config, "num_heads", None) == 2 or config.num_attention_heads == 2
    assert describes(small)
    small.save_pretrained(tmp_path / "hf")
    loaded = type(small).from_pretrained(tmp_path / "hf")
    torch.testing.assert_close(_logits(loaded, x), _logits(small, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    # electra: factored embeddings (embedding_size != hidden_size) keep their config fields;
    # olmo2: its q/k norms over the heads' width fold the lost width into an eps no config field
    # holds, so the counts stay rather than load into a model that computes otherwise;
    # vit_mae: encoder and decoder heads of different sizes (one count cannot describe both)
    ["bart", "whisper", "wav2vec2", "swinv2", "bloom", "bert", "gpt2", "opt", "distilbert",
     "electra", "olmo2", "deberta", "convbert", "xlnet", "vit_mae"],
)  # fmt: skip
def test_heads_the_config_cannot_describe_are_refused_by_plain_transformers(name, tmp_path):
    small, x = _heads(name)
    assert not describes(small)
    small.save_pretrained(tmp_path / "hf")
    with pytest.raises(RuntimeError, match="mismatch"):
        type(small).from_pretrained(tmp_path / "hf")
    with pytest.warns(UserWarning, match="plain transformers refuses"):
        pk.save(small, tmp_path / "pk", dense=True)
    again = pk.load(tmp_path / "pk")  # from the saved config and shape manifest alone
    assert type(again) is type(small)
    with torch.no_grad():
        a, b = call_model(again.eval(), x), call_model(small.eval(), x)
    key = "logits" if "logits" in a else next(iter(a))
    assert torch.equal(a[key], b[key])
