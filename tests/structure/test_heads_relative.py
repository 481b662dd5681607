"""Head pruning of attention that holds its heads in fused, raw or paired tensors: DeBERTa v1
(per-head ``[q | k | v]`` rows of ``in_proj``), ConvBERT (attention heads paired with dynamic
conv heads), XLNet (einsum parameters ``[d_model, heads, d_head]``) and Funnel (relative
attention, a count read from a shared config); and seeded forwards for stochastic models.

Each shrunk model is checked against the ORIGINAL model whose dropped heads are silenced by
zeroing their output-projection slices (Hugging Face's own forward, every head present), and its
per-head tensors against the original's slices of the kept heads."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.masks import get_mask
from prunekit.structure.graph import call_model

from .zoo import INPUTS, ZOO

pytest.importorskip("transformers")


def _cols(h: int, d: int) -> torch.Tensor:
    return torch.arange(h * d, (h + 1) * d)


#: zoo model -> (attention class, output projection, its head count from its weight, its slices
#: of head h of n, per-head tensors with their head dimension, per-head rows with their count
#: (and columns: the conv kernel layer reads each head's query))
CASES = {
    "deberta": (
        "DebertaAttention", "output.dense.weight", lambda w: w.shape[1] // 8,
        lambda h, n: (slice(None), _cols(h, 8)), {},
        {"self.in_proj.weight": 24, "self.pos_proj.weight": 8, "self.q_bias": 8, "self.v_bias": 8},
    ),
    "convbert": (  # attention head h and its dynamic conv head (columns n * d further on)
        "ConvBertAttention", "output.dense.weight", lambda w: w.shape[1] // 8,
        lambda h, n: (slice(None), torch.cat([_cols(h, 4), n * 4 + _cols(h, 4)])), {},
        {"self.query.weight": 4, "self.conv_out_layer.weight": 4,
         "self.conv_kernel_layer.weight": (3, 4), "self.key_conv_attn_layer.pointwise.weight": 4},
    ),
    "xlnet": (
        "XLNetRelativeAttention", "o", lambda w: w.shape[1], lambda h, n: (slice(None), h),
        {"q": 1, "k": 1, "r": 1, "seg_embed": 1, "r_w_bias": 0, "r_r_bias": 0, "r_s_bias": 0}, {},
    ),
    "funnel": (
        "FunnelRelMultiheadAttention", "post_proj.weight", lambda w: w.shape[1] // 8,
        lambda h, n: (slice(None), _cols(h, 8)), {"r_kernel": 1, "r_w_bias": 0},
        {"k_head.weight": 8},
    ),
}  # fmt: skip


def _get(module: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str]:
    sub, _, attr = path.rpartition(".")
    return (module.get_submodule(sub) if sub else module), attr


def _kept(masked: torch.nn.Module, case: tuple, name: str) -> list[int]:
    """The heads whose output slices the masks keep (the others are masked off whole)."""
    _, out, count, head, *_ = case
    mask = get_mask(*_get(masked.get_submodule(name), out))
    n = count(mask)
    kept = [h for h in range(n) if bool(mask[head(h, n)].all())]
    assert all(not bool(mask[head(h, n)].any()) for h in range(n) if h not in kept)
    return kept


def _prune(name: str, uneven: bool = False, **options):
    """Prune half the heads of a zoo model; ``uneven``: its first attention's weights are tripled
    first, so that a global ranking keeps more of its heads than of the others'."""
    model, x = ZOO[name](), INPUTS[name]()
    if uneven:
        first = next(m for m in model.modules() if type(m).__name__ == CASES[name][0])
        with torch.no_grad():
            for p in first.parameters():
                p.mul_(3)
    original = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.prune(model, 0.5, granularity="head", example_inputs=x, **options)
    return original, model, pk.shrink(model, x), x


@pytest.mark.parametrize("name", sorted(CASES))
def test_shrunk_model_equals_the_original_with_dropped_heads_silenced(name):
    case = CASES[name]
    cls, out, count, head, per_head, rows = case
    original, masked, small, x = _prune(name, uneven=True, scope="global")
    silenced = copy.deepcopy(original)
    kept_total = total = 0
    counts = set()
    for attn_name, module in original.named_modules():
        if type(module).__name__ != cls:
            continue
        kept = _kept(masked, case, attn_name)
        w = getattr(*_get(silenced.get_submodule(attn_name), out))
        n = count(w)
        kept_total, total = kept_total + len(kept), total + n
        counts.add(len(kept))
        with torch.no_grad():
            for h in set(range(n)) - set(kept):
                w[head(h, n)] = 0
        keep = torch.tensor(kept)  # the kept heads' slices, in order
        for path, dim in per_head.items():
            full = getattr(*_get(module, path))
            got = getattr(*_get(small.get_submodule(attn_name), path))
            assert torch.equal(got, full.index_select(dim, keep))
        for path, block in rows.items():
            full = getattr(*_get(module, path))
            got = getattr(*_get(small.get_submodule(attn_name), path))
            for dim, b in enumerate(block if isinstance(block, tuple) else (block,)):
                idx = torch.cat([torch.arange(h * b, (h + 1) * b) for h in kept])
                full = full.index_select(dim, idx)
            assert torch.equal(got, full)
    with torch.no_grad():
        ref, got = call_model(silenced, x).logits, call_model(small, x).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert kept_total == total // 2 and len(counts) > 1  # half of all heads, layers differ


def test_deberta_talking_heads_keep_their_rows_and_columns():
    """With talking heads the [heads, heads] mixes of scores and probabilities lose the row and
    the column of every dropped head; shrink verifies the result against the masked model."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.DebertaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, relative_attention=True, pos_att_type=["p2c", "c2p"],
        max_relative_positions=8, talking_head=True,
    )  # fmt: skip
    model = transformers.DebertaModel(cfg).eval()
    original = copy.deepcopy(model)
    x = INPUTS["deberta"]()
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    small = pk.shrink(model, x)
    kept = _kept(model, CASES["deberta"], "encoder.layer.0.attention")
    assert len(kept) == 2
    for proj in ("head_logits_proj", "head_weights_proj"):
        full = getattr(original.encoder.layer[0].attention.self, proj).weight
        got = getattr(small.encoder.layer[0].attention.self, proj).weight
        assert torch.equal(got, full[kept][:, kept])


def test_xlnet_heads_ranked_by_the_magnitude_of_their_parameters():
    """XLNet's heads live in raw parameters (no Linear layer): magnitude ranks a head by the sum
    of |w| over all its slices, computed here independently; an activation-statistics criterion
    is refused before the model is touched."""
    model, x = ZOO["xlnet"](), INPUTS["xlnet"]()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="uses directly"):
        pk.prune(model, 0.5, granularity="head", criterion="wanda", example_inputs=x, data=[x])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    for i, layer in enumerate(model.transformer.layer):
        attn = layer.rel_attn
        full = {k[len(f"transformer.layer.{i}.rel_attn.") :]: v for k, v in before.items()
                if k.startswith(f"transformer.layer.{i}.rel_attn.")}  # fmt: skip
        dims = CASES["xlnet"][4] | {"v": 1, "o": 1}  # every slice of a head
        score = sum(full[p].abs().movedim(dim, 0).reshape(4, -1).sum(1) for p, dim in dims.items())
        expected = sorted(torch.argsort(score)[2:].tolist())
        assert _kept(model, CASES["xlnet"], f"transformer.layer.{i}.rel_attn") == expected
        assert attn.n_head == 4  # masked: the counts stay until shrink


_RELOAD = """
import torch
import prunekit as pk
from tests.structure.zoo import INPUTS
from prunekit.structure.graph import call_model
for name in names:
    model = pk.load(base + "/" + name)  # the checkpoint alone: config + shape manifest
    with torch.no_grad():
        torch.save(call_model(model.eval(), INPUTS[name]()).logits, base + f"/{name}.pt")
"""


def test_uneven_heads_reload_from_the_checkpoint_alone_in_a_fresh_process(tmp_path, loader):
    """Layers that keep different head counts (scope global): Funnel's per-layer config copies
    and XLNet's counts come back from the saved config and shapes, with the same logits."""
    names = ["funnel", "xlnet", "deberta", "convbert"]
    expected = {}
    for name in names:
        _, _, small, x = _prune(name, uneven=True, scope="global")
        if name == "funnel":
            counts = {m.config.n_head for m in small.modules() if hasattr(m, "post_proj")}
            assert len(counts) > 1 and small.config.n_head == 4  # per layer; the model's stays
        pk.save(small, tmp_path / name)
        with torch.no_grad():
            expected[name] = call_model(small, x).logits
    loader.run(_RELOAD, base=tmp_path, names=names)
    for name in names:
        assert torch.equal(torch.load(tmp_path / f"{name}.pt", weights_only=True), expected[name])


def test_uniform_funnel_heads_load_in_plain_transformers(tmp_path):
    """The same count in every layer is written to the config (d_head is a field of its own)."""
    _, _, small, x = _prune("funnel")
    assert small.config.n_head == 2
    assert all(m.config.n_head == 2 for m in small.modules() if hasattr(m, "post_proj"))
    small.save_pretrained(tmp_path)
    loaded = type(small).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(call_model(loaded, x).logits, call_model(small, x).logits)


def test_stochastic_forwards_are_compared_on_the_same_draws():
    """ViTMAE masks random patches on every call, even in eval mode: two plain forwards differ,
    prunekit's forwards (trace, verification) draw the same numbers, and the caller's random
    state is left as it was."""
    model, x = ZOO["vit_mae"](), INPUTS["vit_mae"]()
    with torch.no_grad():
        assert not torch.equal(model(x).logits, model(x).logits)
        state = torch.get_rng_state()
        a, b = call_model(model, x), call_model(model, x)
        assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.mask, b.mask)
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    small = pk.shrink(model, x)  # verified on the same draws
    with torch.no_grad():
        torch.testing.assert_close(call_model(small, x).logits, call_model(model, x).logits)
