"""A shrunk causal LM written by ``save_pretrained`` and read back by plain ``transformers``."""

from __future__ import annotations

from pathlib import Path

import torch


def reload_matches(model, directory: Path, ids: torch.Tensor, new_tokens: int):
    """Save ``model``, load it with ``AutoModelForCausalLM.from_pretrained`` and assert the same
    logits (within 1e-6) and the same ``new_tokens`` greedy tokens; returns (loaded, tokens)."""
    import transformers

    model.save_pretrained(directory)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
        tokens = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        assert torch.equal(loaded.generate(ids, max_new_tokens=new_tokens, do_sample=False), tokens)
    return loaded, tokens
