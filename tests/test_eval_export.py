"""``prunekit eval``, ``pk.evaluate``, ``--loss`` for gradient criteria, and ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.cli import main
from prunekit.demo import digits_cnn

transformers = pytest.importorskip("transformers")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz",
         "the", "model", "is", "small", "pruned", "fast", "##s", "##ed", ".", ","]  # fmt: skip
TEXT = (
    "the model is small. the pruned model is fast. a small model, a fast model. "
    "the models are pruned. fast models, small models. "
) * 8


def with_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)


@pytest.fixture
def gpt2_dir(tmp_path) -> Path:
    """A tiny GPT-2 causal LM with a word-piece tokenizer, as a Hugging Face folder."""
    folder = tmp_path / "gpt2"
    with_tokenizer(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def bert_dir(tmp_path) -> Path:
    folder = tmp_path / "bert"
    with_tokenizer(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def run(*args: str, capsys) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_perplexity_of_a_causal_lm(gpt2_dir, text_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run("prune", str(gpt2_dir), "--sparsity", "0.5", "-o", str(out), capsys=capsys)
    assert code == 0, err
    code, text, err = run("eval", str(out), "--text", str(text_file), "--seq-len", "16", "--json",
                          capsys=capsys)  # fmt: skip
    assert code == 0, err
    r = json.loads(text)
    assert r["task"] == "perplexity" and r["baseline"] == str(gpt2_dir.resolve())
    tok = transformers.AutoTokenizer.from_pretrained(gpt2_dir)
    dense = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    pruned = pk.load(out)
    texts = [TEXT]
    assert r["perplexity"] == pytest.approx(pk.evaluate.perplexity(pruned, texts, tok, 16))
    assert r["baseline_perplexity"] == pytest.approx(pk.evaluate.perplexity(dense, texts, tok, 16))


def test_eval_embeddings_agree_fully_with_themselves(bert_dir, tmp_path, capsys):
    lines = tmp_path / "sentences.txt"
    lines.write_text("\n".join(s.strip() for s in TEXT.split(".") if s.strip()))
    code, text, err = run("eval", str(bert_dir), "--baseline", str(bert_dir), "--text",
                          str(lines), "--task", "embedding", "--json", capsys=capsys)  # fmt: skip
    assert code == 0, err
    r = json.loads(text)
    assert r["cosine"] == pytest.approx(1.0, abs=1e-6) and r["top1"] == 1.0
    out = tmp_path / "out"
    assert run("prune", str(bert_dir), "--sparsity", "0.7", "-o", str(out), capsys=capsys)[0] == 0
    code, text, err = run("eval", str(out), "--text", str(lines), "--task", "embedding",
                          capsys=capsys)  # fmt: skip
    assert code == 0, err
    cosine = float(text.split("cosine vs baseline ")[1].split(",")[0])
    assert -1 <= cosine < 0.9999


def test_evaluate_accuracy_with_labels():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        with_tokenizer(Path(tmp))
        tok = transformers.AutoTokenizer.from_pretrained(tmp)
    texts = ["the model is small", "the model is fast", "small models", "fast pruned models"]
    with torch.no_grad():
        preds = [int(model(**tok(t, return_tensors="pt")).logits.argmax(-1)) for t in texts]
    labels = [preds[0], preds[1], 1 - preds[2], 1 - preds[3]]  # two right, two wrong
    r = pk.evaluate(model, texts, tokenizer=tok, labels=labels)
    assert r["task"] == "accuracy" and r["accuracy"] == pytest.approx(0.5)


def test_gradient_criteria_from_the_cli(gpt2_dir, bert_dir, text_file, tmp_path, capsys):
    # a causal LM gets next-token labels automatically
    code, _, err = run("prune", str(gpt2_dir), "--criterion", "obd", "--sparsity", "0.5",
                       "--calibration", str(text_file), "--nsamples", "4", "--seq-len", "16",
                       "-o", str(tmp_path / "a"), capsys=capsys)  # fmt: skip
    assert code == 0, err
    w = pk.load(tmp_path / "a").transformer.h[0].mlp.c_fc.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)
    common = ["--criterion", "taylor", "--sparsity", "0.5", "--calibration", str(text_file),
              "--nsamples", "4", "--seq-len", "16"]  # fmt: skip
    # an encoder needs --loss; with a masked-LM head, mlm works
    code, _, err = run("prune", str(bert_dir), *common, "-o", str(tmp_path / "b"), capsys=capsys)
    assert code == 2 and "--loss" in err
    code, _, err = run("prune", str(bert_dir), *common, "--loss", "mlm", "-o",
                       str(tmp_path / "b"), capsys=capsys)  # fmt: skip
    assert code == 0, err


def test_mlm_labels_mask_only_ordinary_tokens():
    from prunekit.textdata import add_labels

    with_tokenizer(Path("/tmp/pk-mlm-tok"))
    tok = transformers.AutoTokenizer.from_pretrained("/tmp/pk-mlm-tok")
    ids = torch.tensor([[2] + [30 + i % 6 for i in range(200)] + [3]])
    batch = add_labels([{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], "mlm", tok)[0]
    chosen = batch["labels"] != -100
    assert 0.05 < float(chosen.float().mean()) < 0.3
    assert not chosen[0, 0] and not chosen[0, -1]  # [CLS] and [SEP] never masked
    assert bool((batch["input_ids"][chosen] == tok.mask_token_id).all())
    assert torch.equal(batch["labels"][chosen], ids[chosen])


# ---- ONNX --------------------------------------------------------------------------------------


def test_export_of_a_shrunk_model_matches_onnxruntime_and_is_smaller(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "small"
    code, _, err = run("prune", "prunekit.demo:digits_cnn", "--granularity", "channel",
                       "--sparsity", "0.5", "--example-shape", "1,1,8,8", "-o", str(out),
                       capsys=capsys)  # fmt: skip
    assert code == 0, err
    onnx_file = tmp_path / "small.onnx"
    code, text, err = run("export", str(out), "--onnx", "-o", str(onnx_file), capsys=capsys)
    assert code == 0, err and "dense" in text
    model = pk.load(out, model=digits_cnn()).eval()
    x = torch.randn(1, 1, 8, 8)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)
    dense_file = pk.export_onnx(digits_cnn(), torch.randn(1, 1, 8, 8), tmp_path / "dense.onnx")
    assert onnx_file.stat().st_size < 0.6 * dense_file.stat().st_size


def test_export_of_a_finalized_hf_model(tmp_path, bert_dir, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    assert run("prune", str(bert_dir), "--sparsity", "0.5", "-o", str(out), capsys=capsys)[0] == 0
    code, text, err = run("export", str(out), "--onnx", capsys=capsys)
    assert code == 0, err
    assert Path(str(out) + ".onnx").is_file() and "all stored dense" in text


def test_export_checks_parity(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    real = onnxruntime.InferenceSession

    class Off(real):  # an ONNX runtime that computes something else
        def run(self, *a, **k):
            return [o + 1 for o in super().run(*a, **k)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Off)
    with pytest.raises(pk.VerificationError, match="differs"):
        pk.export_onnx(digits_cnn(), torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
