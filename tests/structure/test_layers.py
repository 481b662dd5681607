"""Depth pruning: whole blocks removed (granularity="layer"), ranked by block influence."""

from __future__ import annotations

import warnings

import pytest
import torch

import prunekit as pk
from prunekit.errors import TargetError

from .plain_load import reload_matches
from .zoo import INPUTS, LLAMA_LIKE, ZOO

transformers = pytest.importorskip("transformers")


def _mistral(layers: int = 6):
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(**{**LLAMA_LIKE, "num_hidden_layers": layers})
    return transformers.MistralForCausalLM(cfg).eval()


def _data():
    return [
        {"input_ids": torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(i))}
        for i in range(3)
    ]


def _influence_by_hand(model, data):
    """1 - cos(h_in, h_out) per block, from the model's own hidden states."""
    total = torch.zeros(len(model.model.layers), dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for batch in data:
            hs = model(**batch, output_hidden_states=True).hidden_states
            for i in range(len(total)):
                h_out = hs[i + 1] if i + 1 < len(total) else None
                if h_out is None:  # the last entry is after the final norm: capture directly
                    continue
                cos = torch.nn.functional.cosine_similarity(hs[i].double(), h_out.double(), -1)
                total[i] += (1 - cos).sum()
            count += hs[0].shape[0] * hs[0].shape[1]
    return total[:-1] / count


def test_block_influence_removes_the_blocks_that_change_their_input_least(tmp_path):
    model, x, data = _mistral(), INPUTS["llama"](), _data()
    by_hand = _influence_by_hand(model, data)  # blocks 0..4 (the last one is checked in shrink)
    pk.prune(model, 0.5, granularity="layer", criterion="block-influence", example_inputs=x,
             data=data)  # fmt: skip
    removed = [i for i, b in enumerate(model.model.layers) if not b.mlp.down_proj.weight.any()]
    assert len(removed) == 3
    expected = set(torch.argsort(by_hand)[:3].tolist())
    if 5 not in removed:  # then all three come from the blocks measured by hand
        assert set(removed) == expected
    small = pk.shrink(model, x)
    assert len(small.model.layers) == small.config.num_hidden_layers == 3
    assert [b.self_attn.layer_idx for b in small.model.layers] == [0, 1, 2]
    with torch.no_grad():
        torch.testing.assert_close(small(**x).logits, model(**x).logits, rtol=0, atol=1e-6)
    reload_matches(small, tmp_path / "hf", x["input_ids"], new_tokens=4)


def test_width_heads_and_depth_one_after_the_other_halve_a_llama(tmp_path):
    model, x = _mistral(4), INPUTS["llama"]()
    before = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for granularity in ("channel", "head", "layer"):
            pk.prune(model, 0.5, granularity=granularity, example_inputs=x)
            model = pk.shrink(model, x)
    assert sum(p.numel() for p in model.parameters()) <= 0.5 * before
    model.save_pretrained(tmp_path / "hf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, model(**x).logits, rtol=0, atol=1e-6)


def test_post_norm_blocks_are_refused_before_anything_is_masked():
    model, x = ZOO["bert"](), INPUTS["bert"]()  # LayerNorm(h + f(h)): not the identity at zero
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TargetError, match="identity"):
        pk.prune(model, 0.5, granularity="layer", example_inputs=x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
