"""``bench`` and ``prunekit bench``: sizes, memory, latency fields (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import prunekit as pk
from prunekit.analysis.bench import (
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


def test_bench_reports_disk_memory_and_latency(tmp_path):
    model = pruned_net()
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "prunekit.json").write_text("{}")
    x = torch.randn(1, 64)
    ref = model(x).detach()
    timer = FakeTimer({**SPARSE_WINS, "sparse": 0.25})
    fast, result = bench(model, tmp_path, x, timer=timer, cache=DecisionCache())
    assert isinstance(fast[0], SparseLinear)
    with torch.no_grad():
        assert torch.allclose(fast(x), ref, rtol=1e-5, atol=1e-6)
    d = result.to_dict()
    json.dumps(d)
    assert d["disk"] == {"dense_bytes": dense_safetensors_bytes(net()), "bytes": 1002}
    assert d["memory"]["bytes"] <= 0.3 * d["memory"]["dense_bytes"]
    assert d["latency"]["speedup"] == 4.0 and d["input_shape"] == [1, 64]
    assert "size on disk" in str(result)


def test_bench_with_nothing_to_swap_times_the_model_once():
    model = net()  # unpruned: sparsify keeps every layer dense
    _, result = bench(model, None, torch.randn(2, 64), timer=FakeTimer(), cache=DecisionCache())
    assert result.disk_bytes is None
    assert result.to_dict()["latency"]["speedup"] == 1.0


def test_example_input_guesses():
    assert example_input(net(), 3).shape == (3, 64)
    assert example_input(net(), shape=[2, 64]).shape == (2, 64)
    cnn, _ = make("cnn")
    with pytest.raises(ConfigError, match="input-shape"):
        example_input(cnn)

    class LM(nn.Module):
        class config:  # stands in for a Hugging Face config
            vocab_size = 50

        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 8)

    ids = example_input(LM(), 2, seq_len=5)
    assert ids.shape == (2, 5) and ids.dtype == torch.int64


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_cli_bench_json(tmp_path, capsys, keep_threads):
    weights = tmp_path / "w.safetensors"
    save_file(pruned_net().state_dict(), weights)
    spec = "tests.test_runtime_bench:net"
    assert main(["bench", spec, "--weights", str(weights), "--threads", "1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["disk"]["bytes"] == weights.stat().st_size
    assert d["memory"]["bytes"] <= d["memory"]["dense_bytes"]  # tiny layers may stay dense
    assert set(d["latency"]) >= {"dense_s", "sparse_s", "speedup", "simulated_speedup"}


def test_cli_bench_on_a_compressed_checkpoint(tmp_path, capsys, keep_threads):
    out = tmp_path / "ckpt"
    pk.save(pruned_net(), out)  # compressed ("auto" format)
    args = ["bench", str(out), "--factory", "tests.test_runtime_bench:net", "--threads", "1"]
    assert main([*args, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["disk"]["bytes"] == directory_bytes(out)
    assert d["disk"]["bytes"] < 0.5 * d["disk"]["dense_bytes"]
    assert main([*args, "--layers"]) == 0
    text = capsys.readouterr().out
    assert "prunekit sparsify" in text and "size on disk" in text


def test_cli_bench_on_a_prune_output(tmp_path, capsys, keep_threads):
    out = tmp_path / "pruned"
    spec = "tests.test_runtime_bench:net"
    assert main(["prune", spec, "--sparsity", "0.9", "-o", str(out)]) == 0
    capsys.readouterr()
    bench = ["bench", str(out), "--threads", "1", "--json", "--trust-source"]  # its own source
    assert main(bench) == 0  # rebuilt from the factory prune recorded
    assert json.loads(capsys.readouterr().out)["input_shape"] == [1, 64]


def test_cli_bench_errors(capsys, tmp_path):
    assert main(["bench", str(tmp_path), "--factory", "tests.test_runtime_bench:net"]) == 2
    assert "--factory" in capsys.readouterr().err
    assert main(["bench", "tests.test_runtime_bench:net", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "x:y", "--input-shape", "1,a"])
