"""No code from checkpoints: a ``source`` named in prunekit.json is imported only with
``--trust-source`` (or when it is one of prunekit's own factories)."""

from __future__ import annotations

import json
import sys
import uuid

import pytest
import torch

import prunekit as pk
from prunekit.cli import main
from prunekit.demo import digits_cnn
from prunekit.formats import header as hdr


def run_main(*args: str, capsys) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """A checkpoint whose source is a module that leaves a marker file when imported."""
    name = f"pk_hostile_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{name}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "from prunekit.demo import digits_cnn as factory\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    model = digits_cnn()
    pk.prune(model, 0.5)
    pk.save(model, tmp_path / "ck", dense=True, extra={"source": f"{name}:factory"})
    yield tmp_path / "ck", name, marker
    sys.modules.pop(name, None)


COMMANDS = {
    "report": ["report", "{dir}", "--json"],
    "bench": ["bench", "{dir}", "--example-shape", "1,1,8,8", "--json"],
    "prune": ["prune", "{dir}", "--sparsity", "0.6", "-o", "{out}"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_named_source_is_not_imported_without_trust_source(hostile, tmp_path, command, capsys):
    directory, name, marker = hostile
    args = [a.format(dir=directory, out=tmp_path / "out") for a in COMMANDS[command]]
    code, _, err = run_main(*args, capsys=capsys)
    assert code == 2 and "--trust-source" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and name not in sys.modules
    assert not (tmp_path / "out").exists()


def test_trust_source_imports_the_named_factory(hostile, capsys):
    directory, _, marker = hostile
    code, out, err = run_main("report", str(directory), "--json", "--trust-source", capsys=capsys)
    assert code == 0, err
    assert marker.read_text() == "imported"
    rows = {r["name"]: r for r in json.loads(out)["layers"]}
    assert rows["6.weight"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_prunekits_own_factories_need_no_flag(tmp_path, capsys):
    model = digits_cnn()
    pk.prune(model, 0.5)
    pk.save(model, tmp_path / "ck", extra={"source": "prunekit.demo:digits_cnn"})
    code, out, err = run_main("report", str(tmp_path / "ck"), "--json", capsys=capsys)
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["layers"]}
    assert rows["6.weight"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_hf_architectures_outside_transformers_are_refused(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    pk.save(transformers.BertModel(config), tmp_path / "ck")
    config_path = tmp_path / "ck" / "config.json"
    cfg = json.loads(config_path.read_text())
    cfg["architectures"] = ["AutoTokenizer"]  # a transformers name, but not a model class
    config_path.write_text(json.dumps(cfg))
    info = {"sha256": hdr.sha256_file(config_path), "bytes": config_path.stat().st_size}
    header = json.loads((tmp_path / "ck" / "prunekit.json").read_text())
    header["files"]["config.json"].update(info)
    header["checksum"] = hdr.checksum(header)
    (tmp_path / "ck" / "prunekit.json").write_text(json.dumps(header))
    code, _, err = run_main("report", str(tmp_path / "ck"), capsys=capsys)
    assert code == 2 and "no model class 'AutoTokenizer'" in err
