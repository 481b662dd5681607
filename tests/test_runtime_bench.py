"""``bench`` and ``prunekit bench``: sizes, memory, latency fields (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import prunekit as pk
from prunekit.analysis.bench import (
    Latency,
    bench,
    dense_safetensors_bytes,
    directory_bytes,
    example_input,
)
from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.runtime import DecisionCache, SparseLinear
from tests.helpers import make
from tests.test_runtime_sparsify import SPARSE_WINS, FakeTimer


def net() -> nn.Module:
    """A factory for the CLI test: ``tests.test_runtime_bench:net``."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16))


def pruned_net() -> nn.Module:
    model = net()
    pk.prune(model, 0.9)
    return pk.finalize(model)


def fixed_sampler(times: dict[str, float]):
    """Runs every candidate once (so the code paths run) and reports fixed per-call seconds."""

    def sample(candidates, rounds):
        out = {}
        for name, fn in candidates.items():
            fn()
            t = times.get(name, 1.0)
            out[name] = Latency([t, t, 2 * t][:rounds], [t] * 3)
        return out

    return sample


def test_dense_safetensors_bytes_is_the_real_file_size(tmp_path):
    model = pruned_net()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    assert dense_safetensors_bytes(model) == directory_bytes(tmp_path)


def test_tied_weights_are_counted_once():
    lin = nn.Linear(8, 8)
    tied = nn.ModuleDict({"a": lin, "b": nn.Linear(8, 8)})
    tied["b"].weight = lin.weight
    assert dense_safetensors_bytes(tied) < dense_safetensors_bytes(
        nn.ModuleList([lin, nn.Linear(8, 8)])
    )


def test_bench_against_the_dense_twin(tmp_path):
    model = pruned_net()
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "prunekit.json").write_text("{}")
    x = torch.randn(1, 64)
    ref = model(x).detach()
    timer = FakeTimer({**SPARSE_WINS, "sparse": 0.25})
    fast, result = bench(
        model, tmp_path, x, timer=timer, cache=DecisionCache(),
        sampler=fixed_sampler({"baseline": 4.0, "pruned": 1.0}),
    )  # fmt: skip
    assert isinstance(fast[0], SparseLinear)
    with torch.no_grad():
        assert torch.allclose(fast(x), ref, rtol=1e-5, atol=1e-6)
    d = result.to_dict()
    json.dumps(d)
    assert d["baseline"]["label"] == "dense twin"
    assert d["baseline"]["disk_bytes"] == dense_safetensors_bytes(net())
    assert d["pruned"]["disk_bytes"] == 1002
    dense_bytes = sum(p.numel() * 4 for p in net().parameters())
    assert d["baseline"]["weight_bytes"] == dense_bytes
    assert d["ratios"]["less_memory"] == pytest.approx(dense_bytes / d["pruned"]["weight_bytes"])
    assert d["ratios"]["faster"] == 4.0 and d["inputs"] == {"input": [1, 64]}
    assert d["pruned"]["latency"]["min_s"] == 1.0 and d["pruned"]["latency"]["max_s"] == 2.0
    assert "size on disk" in str(result) and "x faster" in str(result)


def test_bench_against_a_baseline_shows_the_shrink():
    torch.manual_seed(0)
    x = torch.randn(2, 64)
    base = net()
    small = net()
    pk.prune(small, 0.5, granularity="channel", example_inputs=x)
    small = pk.shrink(small, x)
    _, result = bench(small, None, x, baseline=base, sampler=fixed_sampler({}), rounds=3)
    d = result.to_dict()
    assert d["baseline"]["label"] == "baseline"
    params = lambda m: sum(p.numel() * 4 for p in m.parameters())  # noqa: E731
    assert d["baseline"]["weight_bytes"] == params(base)
    assert d["pruned"]["weight_bytes"] == params(small) < 0.6 * params(base)
    assert d["baseline"]["disk_bytes"] == dense_safetensors_bytes(base)


def test_busy_machine_and_wide_spread_are_flagged():
    from prunekit.analysis.bench import BenchResult, Side, reliability_warnings

    calm = Latency([1.0, 1.0, 1.1], [1.0, 1.0, 1.1])
    wide = Latency([1.0, 1.0, 5.0], [1.0, 1.0, 5.0])
    preempted = Latency([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])

    def result(load, pruned):
        return BenchResult(
            Side("baseline", 1, 1, calm), Side("pruned", 1, 1, pruned), {}, 1,
            "thread CPU time", {"before": load, "after": load, "cpus": 2.0}, None,
        )  # fmt: skip

    assert reliability_warnings(result(0.2, calm)) == []
    assert "busy" in reliability_warnings(result(9.0, calm))[0]
    assert "spread" in reliability_warnings(result(0.2, wide))[0]
    assert "preempted" in reliability_warnings(result(0.2, preempted))[0]


def test_example_input_guesses():
    assert example_input(net(), 3).shape == (3, 64)
    assert example_input(net(), shape=[2, 64]).shape == (2, 64)
    cnn, _ = make("cnn")
    with pytest.raises(ConfigError, match="example-shape"):
        example_input(cnn)

    class LM(nn.Module):
        class config:  # stands in for a Hugging Face config
            vocab_size = 50

        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 8)

    ids = example_input(LM(), 2, seq_len=5)["input_ids"]
    assert ids.shape == (2, 5) and ids.dtype == torch.int64 and int(ids.max()) < 50


def test_example_input_specs_round_trip():
    from prunekit.example_inputs import describe, rebuild

    x = {"input_ids": torch.randint(3, 40, (2, 7)), "attention_mask": torch.ones(2, 7).long()}
    spec = json.loads(json.dumps(describe(x)))
    y = rebuild(spec, seed=1, batch_size=1, seq_len=5)
    assert y["input_ids"].shape == (1, 5) and y["attention_mask"].shape == (1, 5)
    assert int(y["input_ids"].min()) >= 3 and int(y["input_ids"].max()) < 40
    assert bool((y["attention_mask"] == 1).all())
    assert torch.equal(rebuild(spec, 1)["input_ids"], rebuild(spec, 1)["input_ids"])
    t = rebuild(describe(torch.randn(2, 3, 4)))
    assert t.shape == (2, 3, 4) and t.dtype == torch.float32


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_cli_bench_json(tmp_path, capsys, keep_threads):
    weights = tmp_path / "w.safetensors"
    save_file(pruned_net().state_dict(), weights)
    spec = "tests.test_runtime_bench:net"
    args = ["bench", spec, "--weights", str(weights), "--rounds", "3", "--json"]
    assert main(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["pruned"]["disk_bytes"] == weights.stat().st_size
    assert d["threads"] == 1  # the default
    assert d["pruned"]["weight_bytes"] <= d["baseline"]["weight_bytes"]
    lat = d["pruned"]["latency"]
    assert lat["min_s"] <= lat["median_s"] <= lat["max_s"] and lat["rounds"] == 3
    assert {"before", "after", "cpus"} <= set(d["load"])


def test_cli_bench_on_a_compressed_checkpoint(tmp_path, capsys, keep_threads):
    out = tmp_path / "ckpt"
    pk.save(pruned_net(), out)  # compressed ("auto" format)
    args = ["bench", str(out), "--factory", "tests.test_runtime_bench:net", "--rounds", "3"]
    assert main([*args, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["pruned"]["disk_bytes"] == directory_bytes(out)
    assert d["ratios"]["smaller_on_disk"] > 2
    assert main([*args, "--layers"]) == 0
    text = capsys.readouterr().out
    assert "prunekit sparsify" in text and "size on disk" in text


def test_cli_bench_on_a_prune_output_uses_its_baseline_and_inputs(tmp_path, capsys, keep_threads):
    out = tmp_path / "pruned"
    spec = "tests.test_runtime_bench:net"
    args = ["prune", spec, "--granularity", "channel", "--sparsity", "0.5",
            "--example-shape", "3,64", "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    bench = ["bench", str(out), "--rounds", "3", "--json", "--trust-source"]  # its own source
    assert main(bench) == 0  # rebuilt from the factory prune recorded
    d = json.loads(capsys.readouterr().out)
    assert d["inputs"] == {"input": [3, 64]}  # recorded at prune time
    assert d["baseline"]["label"] == "baseline"  # the unpruned net(), not the shrunk model
    assert d["baseline"]["weight_bytes"] == sum(p.numel() * 4 for p in net().parameters())
    assert d["ratios"]["less_memory"] > 1.6
    assert main([*bench, "--batch-size", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == {"input": [1, 64]}


def test_cli_bench_errors(capsys, tmp_path):
    assert main(["bench", str(tmp_path), "--factory", "tests.test_runtime_bench:net"]) == 2
    assert "--factory" in capsys.readouterr().err
    assert main(["bench", "tests.test_runtime_bench:net", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["bench", "x:y", "--example-shape", "1,a"]) == 2
    assert "--example-shape" in capsys.readouterr().err
