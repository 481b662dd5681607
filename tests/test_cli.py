"""The ``prunekit`` console script, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import prunekit as pk
from prunekit.cli import main
from prunekit.commands import COMMANDS
from prunekit.demo import digits_cnn

SCRIPT = Path(sys.executable).with_name("prunekit")
FACTORY = "prunekit.demo:digits_cnn"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"prunekit {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def run_main(*args: str, capsys) -> tuple[int, str, str]:
    """The CLI in-process (the same ``main`` the console script calls): (code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse exits for --help and usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_console_script_help():
    assert SCRIPT.exists(), "install the package (make install) to get the console script"
    proc = cli("--help")
    assert "usage: prunekit" in proc.stdout
    assert all(name in proc.stdout for name in COMMANDS.names())


@pytest.mark.parametrize("command", COMMANDS.names())
def test_help(command, capsys):
    code, out, _ = run_main(command, "--help", capsys=capsys)
    assert code == 0 and f"usage: prunekit {command}" in out


def test_every_expected_command_is_registered():
    assert {"prune", "report", "demo", "bench"} <= set(COMMANDS.names())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["prune", FACTORY, "--sparsity", "1.5", "-o", "x"], ["[0, 1)"]),
        (["prune", FACTORY, "--criterion", "magic", "--sparsity", "0.5", "-o", "x"],
         ["magic", "magnitude"]),
        (["prune", FACTORY, "--granularity", "5:4", "-o", "x"], ["0 < N < M"]),
        (["prune", "no_such_module:factory", "--sparsity", "0.5", "-o", "x"], ["cannot import"]),
        (["prune", "/no/such/dir", "--sparsity", "0.5", "-o", "x"], ["no such directory"]),
        (["report", FACTORY, "--weights", "/no/such/file.safetensors"], ["cannot read weights"]),
    ],
)  # fmt: skip
def test_errors_are_one_clear_line(args, words, capsys):
    code, _, err = run_main(*args, capsys=capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0]


def test_console_script_error_is_one_line_without_traceback():
    proc = cli("prune", FACTORY, "--sparsity", "1.5", "-o", "x", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "prunekit prune: error: sparsity must be in [0, 1), got 1.5"


def test_report_of_factory_with_weights(tmp_path, capsys):
    torch.manual_seed(0)
    model = digits_cnn()
    with torch.no_grad():
        model[6].weight[:, ::2] = 0
    weights = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(weights))
    code, out, _ = run_main("report", FACTORY, "--weights", str(weights), "--json", capsys=capsys)
    assert code == 0
    layers = {r["name"]: r for r in json.loads(out)["layers"]}
    assert layers["6.weight"]["sparsity"] == pytest.approx(0.5)
    assert layers["0.weight"]["sparsity"] == 0


def test_weights_that_do_not_fit(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    save_file({"0.weight": torch.zeros(3, 3)}, str(weights))
    code, _, err = run_main("report", FACTORY, "--weights", str(weights), capsys=capsys)
    assert code == 2 and "do not fit the model" in err


def test_prune_factory_writes_dense_finalized_checkpoint(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    save_file(digits_cnn().state_dict(), str(weights))
    out = tmp_path / "out"
    cli("prune", FACTORY, "--weights", str(weights), "--granularity", "2:4", "--exclude", "0",
        "-o", str(out))  # fmt: skip
    state = load_file(str(out / "model.safetensors"))
    assert set(state) == set(digits_cnn().state_dict())  # dense, original keys
    w = state["6.weight"]
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["config"]["granularity"] == "2:4"
    proc = cli("report", str(out), "--json")
    rows = {r["name"]: r for r in json.loads(proc.stdout)["layers"]}
    assert rows["6.weight"]["sparsity"] == pytest.approx(0.5)
    assert rows["6.weight"]["nm_valid"] is True


@pytest.fixture
def bert_dir(tmp_path) -> Path:
    """A tiny BERT (4 heads of 8) saved as a Hugging Face directory."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def test_prune_hf_directory(bert_dir, tmp_path, capsys):
    from transformers import BertModel

    out = tmp_path / "out"
    code, _, err = run_main(
        "prune", str(bert_dir), "--sparsity", "0.5", "-o", str(out), capsys=capsys
    )
    assert code == 0, err
    reloaded = BertModel.from_pretrained(out)
    w = reloaded.encoder.layer[0].intermediate.dense.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)


def test_prune_channels_shrinks_a_factory_model(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prune", FACTORY, "--granularity", "channel", "--sparsity", "0.5", "-o", str(out)]
    code, _, err = run_main(*args, capsys=capsys)
    assert code == 2 and "--example-shape" in err  # a factory model has no dummy inputs
    code, _, err = run_main(*args, "--example-shape", "2,1,8,8", capsys=capsys)
    assert code == 0, err
    code, text, _ = run_main("report", str(out), "--json", capsys=capsys)
    full = sum(p.numel() for p in digits_cnn().parameters())
    assert code == 0 and json.loads(text)["totals"]["params"] <= 0.75 * full


def test_prune_heads_of_hf_directory_uses_its_dummy_inputs(bert_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_main(
        "prune", str(bert_dir), "--granularity", "head", "--sparsity", "0.5", "-o", str(out),
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    small = pk.load(out)
    assert type(small).__name__ == "BertModel"
    assert small.encoder.layer[0].attention.self.query.out_features == 16  # 2 of 4 heads left


@pytest.mark.slow
def test_demo_quick_smoke():
    proc = cli("demo", "--quick", "--json")
    rows = json.loads(proc.stdout)
    assert rows[0]["model"] == "dense"
    assert len(rows) == 3
    assert rows[1]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert rows[0]["sparsity"] == 0 and rows[0]["kernels"] == "dense"
    assert all(r["kernels"].endswith(("sparse", ")")) for r in rows[1:])
    assert all(r["disk_bytes"] > 0 and r["latency_ms"] > 0 for r in rows)
    assert rows[1]["disk_bytes"] < rows[0]["disk_bytes"]  # compressed formats
    assert all(0.1 <= r["accuracy"] <= 1 for r in rows)  # above chance even after a few epochs
