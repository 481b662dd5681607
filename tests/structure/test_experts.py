"""MoE expert pruning (granularity="expert", criterion="reap") and channels of fused experts, on
tiny random-weight Mixtral, Qwen2-MoE and Qwen3-MoE models."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.criteria import ScoreContext
from prunekit.criteria.reap import Reap
from prunekit.formats.config_fit import describes
from prunekit.outputs import max_rel_error
from prunekit.structure.experts import expert_groups
from tests.test_bad_input import assert_untouched, snapshot

from .plain_load import reload_matches
from .zoo import INPUTS, ZOO

transformers = pytest.importorskip("transformers")

MOE = ["mixtral", "qwen2_moe", "qwen3_moe"]
FIELD = {"mixtral": "num_local_experts", "qwen2_moe": "num_experts", "qwen3_moe": "num_experts"}


def batches(n: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(5)
    return [{"input_ids": torch.randint(0, 64, (2, 8), generator=g)} for _ in range(n)]


def blocks(model):
    return [layer.mlp for layer in model.model.layers]


@torch.no_grad()
def reap_by_hand(model, data) -> list[torch.Tensor]:
    """Router-weighted expert activation per block, from the block inputs and raw weights:
    softmax router, top-k (renormalised where the model does), SwiGLU experts by matmul."""
    inputs: list[list[torch.Tensor]] = [[] for _ in blocks(model)]
    hooks = [
        b.register_forward_pre_hook(lambda m, a, i=i: inputs[i].append(a[0]))
        for i, b in enumerate(blocks(model))
    ]
    model.eval()
    for batch in data:
        model(**batch, use_cache=False)
    for h in hooks:
        h.remove()
    k = model.config.num_experts_per_tok
    renorm = getattr(model.config, "norm_topk_prob", True)
    out = []
    for b, xs in zip(blocks(model), inputs, strict=True):
        e_count = b.gate.weight.shape[0]
        total, count = torch.zeros(e_count, dtype=torch.float64), torch.zeros(e_count)
        for x in xs:
            h = x.reshape(-1, x.shape[-1]).double()  # [tokens, hidden]
            probs = torch.softmax(h @ b.gate.weight.double().T, dim=-1)
            top_w, top_i = torch.topk(probs, k, dim=-1)
            if renorm:
                top_w = top_w / top_w.sum(-1, keepdim=True)
            for e in range(e_count):
                tok, slot = torch.nonzero(top_i == e, as_tuple=True)
                gate, up = (h[tok] @ b.experts.gate_up_proj[e].double().T).chunk(2, dim=-1)
                y = (F.silu(gate) * up) @ b.experts.down_proj[e].double().T  # [n, hidden]
                total[e] += (top_w[tok, slot] * y.norm(dim=-1)).sum()
                count[e] += len(tok)
        out.append((total / count.clamp_min(1)).float())
    return out


def prune_experts(name: str, sparsity: float = 0.5, **kw):
    model, x = ZOO[name](), INPUTS[name]()
    kw.setdefault("criterion", "reap")
    pk.prune(model, sparsity, granularity="expert", example_inputs=x, data=batches(), **kw)
    return model, x


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(**x).logits


@pytest.mark.parametrize("name", MOE)
def test_reap_scores_are_router_weighted_expert_activations(name):
    model = ZOO[name]()
    expected = reap_by_hand(model, batches())
    ctx = ScoreContext(model=model, data=batches())
    for group, want in zip(expert_groups(model), expected, strict=True):
        got = Reap().group_scores(group, ctx)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert len(set(want.tolist())) == len(want)  # a strict ranking: the test can fail


@pytest.mark.parametrize("name", MOE)
def test_half_the_experts_go_the_least_used_first(name):
    original = ZOO[name]()
    scores = reap_by_hand(original, batches())
    model, x = prune_experts(name)
    small = pk.shrink(model, x)
    assert max_rel_error(outputs(model, x), outputs(small, x)) <= 1e-4  # masked == shrunk
    assert getattr(small.config, FIELD[name]) == 2
    for b_old, b_new, s in zip(blocks(original), blocks(small), scores, strict=True):
        kept = torch.sort(torch.argsort(s, descending=True)[:2]).values  # top-2 by hand
        assert b_new.experts.num_experts == b_new.gate.num_experts == 2
        assert b_new.gate.weight.shape == (2, 32)
        assert torch.equal(b_new.gate.weight, b_old.gate.weight[kept])  # router rows sliced
        assert torch.equal(b_new.experts.gate_up_proj, b_old.experts.gate_up_proj[kept])
        assert torch.equal(b_new.experts.down_proj, b_old.experts.down_proj[kept])
    assert describes(small)


def test_a_masked_expert_receives_no_token():
    model, _ = prune_experts("mixtral")
    routed: list[torch.Tensor] = []
    block = blocks(model)[0]
    dead = (~pk.masks.get_mask(block.gate, "weight").any(1)).nonzero().flatten()
    assert len(dead) == 2
    h = block.experts.register_forward_pre_hook(lambda m, a: routed.append(a[1]))
    with torch.no_grad():
        model(**batches(1)[0])
    h.remove()
    assert not torch.isin(routed[0], dead).any()


def test_shared_experts_stay():
    original = ZOO["qwen2_moe"]()
    model, x = prune_experts("qwen2_moe")
    small = pk.shrink(model, x)
    for b_old, b_new in zip(blocks(original), blocks(small), strict=True):
        for a, b in zip(
            b_old.shared_expert.parameters(), b_new.shared_expert.parameters(), strict=True
        ):
            assert torch.equal(a, b)
        assert torch.equal(b_old.shared_expert_gate.weight, b_new.shared_expert_gate.weight)


def test_a_weight_criterion_sums_over_the_expert():
    original = ZOO["qwen3_moe"]()
    model, x = prune_experts("qwen3_moe", criterion="magnitude")
    small = pk.shrink(model, x)
    for b_old, b_new in zip(blocks(original), blocks(small), strict=True):
        experts = b_old.experts
        l1 = experts.gate_up_proj.abs().sum((1, 2)) + experts.down_proj.abs().sum((1, 2))
        kept = torch.sort(torch.argsort(l1, descending=True)[:2]).values
        assert torch.equal(b_new.experts.down_proj, b_old.experts.down_proj[kept])


@pytest.mark.parametrize("name", MOE)
def test_fewer_experts_than_top_k_is_refused_untouched(name):
    model, x = ZOO[name](), INPUTS[name]()
    snap = snapshot(model)
    with pytest.raises(pk.ConfigError, match="top-k"):
        pk.prune(model, 0.75, granularity="expert", criterion="magnitude", example_inputs=x)
    assert_untouched(model, snap)


def test_activation_statistics_criteria_are_refused_for_experts():
    model, x = ZOO["mixtral"](), INPUTS["mixtral"]()
    with pytest.raises(pk.ConfigError, match="per-layer activation statistics"):
        pk.prune(
            model, 0.5, granularity="expert", criterion="wanda", example_inputs=x, data=batches()
        )


@pytest.mark.parametrize("criterion", ["wanda", "activation"])
def test_channel_pruning_by_activation_statistics_is_refused_before_calibration(criterion):
    """Expert weights see only their routed tokens: statistics criteria are refused with a
    message naming the expert weights and the alternatives, and the model stays bit-identical
    (before: a calibration error about the experts module's type)."""
    model, x = ZOO["qwen2_moe"](), INPUTS["qwen2_moe"]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.ConfigError, match=r"mlp\.experts\.\w+.*granularity='expert'"):
        pk.prune(
            model, 0.5, granularity="channel", criterion=criterion, example_inputs=x, data=batches()
        )
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_dense_model_has_no_experts():
    model, x = ZOO["llama"](), INPUTS["llama"]()
    with pytest.raises(pk.TargetError, match="mixture-of-experts"):
        pk.prune(model, 0.5, granularity="expert", criterion="magnitude", example_inputs=x)


def test_per_layer_counts_keep_the_config_and_say_so(tmp_path):
    model, x = prune_experts("mixtral", exclude=["model.layers.1.mlp.experts"])
    small = pk.shrink(model, x)
    assert [b.experts.num_experts for b in blocks(small)] == [2, 4]
    assert small.config.num_local_experts == 4 and not describes(small)
    with pytest.warns(UserWarning, match="plain transformers"):
        pk.save(small, tmp_path / "dense", dense=True)


@pytest.mark.parametrize("name", MOE)
def test_uniform_result_loads_in_plain_transformers(name, tmp_path):
    model, x = prune_experts(name)
    small = pk.shrink(model, x)
    ids = x["input_ids"]
    loaded, tokens = reload_matches(small, tmp_path / "hf", ids, new_tokens=4)
    assert getattr(loaded.config, FIELD[name]) == 2
    assert tokens.shape[1] == ids.shape[1] + 4


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_fused_expert_channels_shrink_and_stay_aligned(sparsity):
    model, x = ZOO["mixtral"](), INPUTS["mixtral"]()
    before = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no channel left unpruned with a warning
        pk.prune(model, sparsity, granularity="channel", example_inputs=x)
    small = pk.shrink(model, x)
    assert max_rel_error(outputs(model, x), outputs(small, x)) <= 1e-4
    for b in blocks(small):
        experts, hidden, inter = b.experts.down_proj.shape
        assert experts == 4 and hidden % 4 == 0 and inter % 4 == 0  # 16-byte rows
        assert b.experts.gate_up_proj.shape == (4, 2 * inter, hidden)
        assert b.gate.hidden_dim == hidden == b.experts.hidden_dim
    assert sum(p.numel() for p in small.parameters()) < (1 - sparsity / 2) * before


_RELOAD = """
import torch
import prunekit as pk
from tests.structure.zoo import ZOO, INPUTS
for job in jobs:
    name, path = job
    model = pk.load(path, model=ZOO[name]()).eval()
    with torch.no_grad():
        torch.save(model(**INPUTS[name]()).logits, path + ".pt")
"""


@pytest.mark.slow
def test_save_then_load_in_a_fresh_process_is_identical(tmp_path, loader):
    """Uniform and per-layer expert counts, shrunk, and a masked (unshrunk) model: identical
    logits after pk.save then pk.load in a fresh process."""
    cases = {
        "mixtral-uniform": pk.shrink(*prune_experts("mixtral")),
        "qwen2_moe-per-layer": pk.shrink(
            *prune_experts("qwen2_moe", exclude=["model.layers.0.mlp.experts"])
        ),
        "qwen3_moe-masked": prune_experts("qwen3_moe")[0],
    }
    expected, jobs = {}, []
    for key, model in cases.items():
        name = key.split("-")[0]
        path = str(tmp_path / key)
        pk.save(model, path)
        expected[path] = outputs(model, INPUTS[name]())
        jobs.append((name, path))
    loader.run(_RELOAD, jobs=jobs)
    for path, want in expected.items():
        assert torch.equal(torch.load(path + ".pt", weights_only=True), want), path


def test_experts_then_width_load_in_plain_transformers(tmp_path):
    model, x = prune_experts("mixtral")
    small = pk.shrink(model, x)
    pk.prune(small, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(small, x)
    assert (small.config.num_local_experts, small.config.hidden_size) == (2, 16)
    assert small.config.intermediate_size == 64 and describes(small)
    small.save_pretrained(tmp_path / "hf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, small(**x).logits, rtol=0, atol=1e-6)


def test_biased_transposed_experts_lose_their_bias_slices_too():
    """GPT-OSS: experts stored [E, in, out] with 2-D biases [E, out], a router with a bias."""
    config = transformers.GptOssConfig(
        vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=16, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    torch.manual_seed(0)
    model, x = transformers.GptOssForCausalLM(config).eval(), batches(1)[0]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    pk.prune(model, 0.5, granularity="expert", criterion="magnitude", example_inputs=x)
    small = pk.shrink(model, x)
    assert max_rel_error(outputs(model, x), outputs(small, x)) <= 1e-4
    assert small.config.num_local_experts == 2
    experts = small.model.layers[0].mlp.experts
    kept = (~(model.model.layers[0].mlp.router.weight == 0).all(1)).nonzero().flatten()
    name = "model.layers.0.mlp.experts."
    for attr in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
        assert torch.equal(getattr(experts, attr), original[name + attr][kept]), attr
    router = small.model.layers[0].mlp.router
    assert torch.equal(router.bias, original["model.layers.0.mlp.router.bias"][kept])


def test_report_and_pruner_count_the_expert_weights():
    model, x = ZOO["mixtral"](), INPUTS["mixtral"]()
    pruner = pk.Pruner(
        model, 0.5, granularity="expert", criterion="reap", example_inputs=x, data=batches()
    )
    pruner.apply(0.5)
    experts = [
        (f"model.layers.{i}.mlp.experts.{a}", getattr(b.experts, a))
        for i, b in enumerate(blocks(model))
        for a in ("gate_up_proj", "down_proj")
    ]
    rows = {r.name: r for r in pk.report(model).layers}
    assert set(rows) == {name for name, _ in experts}  # the unpruned attention is not listed
    for name, w in experts:
        dead = int((w.reshape(w.shape[0], -1) == 0).all(1).sum())  # whole experts zeroed
        assert dead == 2 and rows[name].granularity == "expert"
        assert rows[name].nonzero == int(torch.count_nonzero(w)) == w.numel() // 2
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    linears = [w for w in linears if w.shape[0] != 64]  # lm_head stays out of the targets
    zero = sum(int((w == 0).sum()) for _, w in experts) + sum(int((w == 0).sum()) for w in linears)
    total = sum(w.numel() for _, w in experts) + sum(w.numel() for w in linears)
    assert pruner.sparsity == pytest.approx(zero / total)
