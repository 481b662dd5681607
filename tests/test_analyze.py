"""``prunekit analyze`` renders readable plots and JSON from a tiny BERT with a tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunekit.cli import main

WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "that",
    "be",
    "are",
    "was",
]


@pytest.fixture
def bert_with_tokenizer(tmp_path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    path = tmp_path / "bert"
    transformers.BertModel(config).save_pretrained(path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab += [f"w{i}" for i in range(40 - len(vocab))]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(path)
    return path


def text(tmp_path: Path, name: str, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    lines = [" ".join(rng.choices(WORDS, k=30)) for _ in range(40)]
    (tmp_path / name).write_text("\n\n".join(lines))
    return tmp_path / name


def test_analyze_writes_plots_and_json(bert_with_tokenizer, tmp_path, capsys):
    from matplotlib.image import imread

    out = tmp_path / "an"
    code = main(
        [
            "analyze", str(bert_with_tokenizer),
            "--calibration", str(text(tmp_path, "calib.txt", 0)),
            "--eval", str(text(tmp_path, "eval.txt", 1)),
            "-o", str(out), "--nsamples", "4", "--seq-len", "16",
            "--sparsities", "0.3,0.6", "--sparsity", "0.45",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "analysis.json").read_text())
    sens = result["sensitivity"]
    assert len(sens["metric"]) == 13  # 2 blocks x 6 linears, and the pooler
    assert all(v[0] <= v[1] for v in sens["metric"].values())  # more sparsity, more error
    bars = result["allocation"]["layers"]
    mean = sum(r["sparsity"] * r["numel"] for r in bars) / sum(r["numel"] for r in bars)
    assert mean == pytest.approx(0.45, abs=2e-3)  # the budget, met by non-uniform layers
    assert len({round(r["sparsity"], 2) for r in bars}) > 1
    sweep = result["sweep"]
    assert [r["sparsity"] for r in sweep] == [0.0, 0.3, 0.6]
    assert sweep[0]["metric"] == 0.0 and sweep[2]["metric"] > sweep[1]["metric"] > 0
    assert all(r["size_mib"] > 0 and r["latency_ms"] > 0 for r in sweep)
    for name in ("sensitivity.png", "layer_sparsity.png", "sweep.png"):
        image = imread(out / name)
        assert image.shape[0] >= 400 and image.shape[1] >= 600
        assert image[..., :3].std() > 0.05  # not blank
