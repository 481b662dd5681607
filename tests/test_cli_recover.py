"""``prunekit recover``: prune a tiny Llama directory with the CLI, distil it back on a text file,
and check the zeros held and the student moved towards the teacher."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.cli import main
from prunekit.train.distill import kl_loss

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

WORDS = [
    "the",
    "a",
    "pruning",
    "model",
    "weight",
    "mask",
    "zero",
    "layer",
    "train",
    "step",
    "loss",
    "teacher",
    "student",
    "data",
    "text",
    "file",
    "sparse",
    "dense",
    "keep",
    "remove",
    "value",
    "group",
    "row",
    "column",
    "channel",
    "head",
    "block",
    "token",
    "window",
    "batch",
    "learn",
    "rate",
    "seed",
    "run",
    "test",
    "check",
    "hold",
    "fast",
    "slow",
    "small",
    "large",
    "good",
    "bad",
    "new",
    "old",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "and",
    "or",
    "not",
    "if",
    "then",
    "else",
    "for",
    "while",
    "with",
    "from",
    "into",
]


@pytest.fixture
def llama_dir(tmp_path) -> Path:
    """A tiny Llama with a word-level tokenizer, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]"
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        initializer_range=0.3,
    )  # fmt: skip
    path = tmp_path / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_recover_distils_a_pruned_folder_and_keeps_its_zeros(llama_dir, tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    words = [WORDS[i] for i in torch.randint(0, len(WORDS), (3000,), generator=g)]
    data = tmp_path / "train.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": " ".join(words[i : i + 100])}) for i in range(0, 3000, 100))
    )
    pruned = tmp_path / "pruned"
    assert main(["prune", str(llama_dir), "--sparsity", "0.7", "-o", str(pruned)]) == 0
    out = tmp_path / "recovered"
    code = main(["recover", str(pruned), "--teacher", str(llama_dir), "--data", str(data),
                 "--steps", "30", "--lr", "3e-3", "--seq-len", "32", "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    teacher = transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval()
    before = pk.load(pruned).eval()
    after = pk.load(out).eval()
    for name, w in before.state_dict().items():
        zeros = w == 0
        if zeros.float().mean() > 0.5:  # a pruned weight: its zeros held through training
            assert not after.state_dict()[name][zeros].any(), name
    ids = torch.randint(2, len(WORDS) + 2, (8, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = teacher(ids).logits
        gap_before = float(kl_loss(before(ids).logits, ref, 1.0, None))
        gap_after = float(kl_loss(after(ids).logits, ref, 1.0, None))
    assert gap_after < 0.8 * gap_before
    header = json.loads((out / "prunekit.json").read_text())
    assert header["recovery"]["steps"] == 30
    # written like prune's folder: compressed weights, the teacher's tokenizer, a card, and the
    # teacher as the baseline that bench and eval compare with
    assert (out / "prunekit.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").read_bytes() == (llama_dir / "tokenizer.json").read_bytes()
    assert (out / "README.md").is_file()
    assert header["baseline"]["model"] == str(llama_dir.resolve())


def test_recover_refuses_a_folder_that_is_not_pruned(llama_dir, tmp_path, capsys):
    code = main(["recover", str(llama_dir), "--teacher", str(llama_dir), "--data", "x.txt",
                 "--steps", "3", "-o", str(tmp_path / "o")])  # fmt: skip
    assert code == 2 and "prunekit.json" in capsys.readouterr().err


def _train_file(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    words = [WORDS[i] for i in torch.randint(0, len(WORDS), (3000,), generator=g)]
    data = tmp_path / "train.txt"
    data.write_text("\n\n".join(" ".join(words[i : i + 100]) for i in range(0, 3000, 100)))
    return data


@pytest.mark.parametrize(
    "flags, method",
    [(["--sparsity", "0.5"], "distill"), (["--granularity", "2:4"], "finetune")],
)
def test_prune_with_recover_steps_trains_between_prunes(llama_dir, tmp_path, capsys, flags, method):
    data = _train_file(tmp_path)
    oneshot, out = tmp_path / "oneshot", tmp_path / "recovered"
    assert main(["prune", str(llama_dir), *flags, "-o", str(oneshot)]) == 0
    code = main(["prune", str(llama_dir), *flags, "--recover-steps", "4", "--prune-steps", "2",
                 "--data", str(data), "--recover-method", method, "--seq-len", "32",
                 "--recover-lr", "3e-3", "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    reference = pk.load(oneshot).state_dict()
    recovered = pk.load(out).eval()
    state = recovered.state_dict()
    pruned = [name for name, w in reference.items() if (w == 0).any()]
    assert len(pruned) == 14  # 7 Linear layers x 2 blocks
    for name in pruned:
        w = state[name]
        # the same exact count of zeros as the one-shot prune: half of every weight
        assert int((w == 0).sum()) == int((reference[name] == 0).sum()) == w.numel() // 2, name
        if "2:4" in flags:
            assert bool(((w.reshape(-1, 4) == 0).sum(-1) >= 2).all()), name
        assert not torch.equal(w, reference[name]), f"{name} was not trained"
    header = json.loads((out / "prunekit.json").read_text())
    # Iterative(2, every=4): prunes before steps 0 and 4, then 4 more steps of recovery
    assert header["recovery"]["steps"] == 8 and header["recovery"]["method"] == method
    assert [step for step, _ in header["recovery"]["prunes"]] == [0, 4]
    ids = torch.randint(2, len(WORDS) + 2, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.isfinite(recovered(ids).logits).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--recover-steps", "3"], "--data"),
        (["--data", "train.txt"], "--recover-steps"),
        (["--recover-steps", "0", "--data", "x"], ">= 1"),
        (["--recover-steps", "3", "--data", "missing.txt"], "no such file"),
    ],
)
def test_prune_recover_options_are_checked_before_loading(
    llama_dir, tmp_path, capsys, extra, message
):
    out = tmp_path / "o"
    assert main(["prune", str(llama_dir), "--sparsity", "0.5", *extra, "-o", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# ---- the recipe options: each one reaches distill and does what it says --------------------------

SENTENCES = [
    f"The {a} {b} keeps every {c} of the {d} when the {e} runs"
    + "".join(f" and {w}" for w in WORDS[: i % 5])
    + "."
    for i, (a, b, c, d, e) in enumerate(
        zip(WORDS[2:40], WORDS[10:48], WORDS[20:58], WORDS[5:43], WORDS[30:68], strict=False)
    )
]  # of 12 to 16 words: a batch of them is padded


@pytest.fixture
def bert_dir(tmp_path) -> Path:
    """A tiny BERT encoder (no head: a sentence encoder) with a WordPiece tokenizer and dropout
    0.3, saved as a Hugging Face directory."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS, "when", "runs", "keeps",
             "every", "of"]  # fmt: skip
    path = tmp_path / "bert"
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(dict.fromkeys(vocab)), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
        hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3, initializer_range=0.3,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(path)
    return path


@pytest.fixture
def bert_pruned(bert_dir, tmp_path) -> Path:
    out = tmp_path / "bert-pruned"
    assert (
        main(["prune", str(bert_dir), "--sparsity", "0.6", "--seq-len", "16", "-o", str(out)]) == 0
    )
    return out


@pytest.fixture
def sentences_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"text": " ".join(SENTENCES[i : i + 3])})
                              for i in range(0, len(SENTENCES), 3)))  # fmt: skip
    return path


class Spy:
    """Watches a distillation run from inside the real training loop: at the first step it
    evaluates the loss twice on the same batch (equal only without dropout) and records the
    dtype of the student's first Linear output, the batches' shapes and masks, the teacher's
    forward count and targets, and the loss parts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from prunekit.train.distill import Distiller

        distill_module = importlib.import_module("prunekit.train.distill")  # not the function

        self.calls: dict = {}
        self.teacher_runs = 0
        self.target_keys: set[str] = set()
        self.parts: set[str] = set()
        self.linear_dtypes: set[torch.dtype] = set()
        self.masks: list[torch.Tensor] = []
        real_run, real_targets, real_compute = (
            distill_module.run_training, Distiller.teacher_targets, Distiller.compute
        )  # fmt: skip
        spy = self

        def run_training(model, data, steps, loss_of, **kwargs):
            spy.calls = dict(kwargs, steps=steps)
            linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
            linear.register_forward_hook(lambda m, a, out: spy.linear_dtypes.add(out.dtype))
            first = {"done": False}

            def probed(item):
                if not first["done"]:
                    first["done"] = True
                    with torch.no_grad():
                        spy.twice = (float(loss_of(item)), float(loss_of(item)))
                return loss_of(item)

            return real_run(model, data, steps, probed, **kwargs)

        def teacher_targets(self, batch):
            spy.teacher_runs += 1
            spy.masks.append(batch["attention_mask"])
            out = real_targets(self, batch)
            spy.target_keys |= set(out)
            return out

        def compute(self, *args, **kwargs):
            total, parts, out = real_compute(self, *args, **kwargs)
            spy.parts |= set(parts)
            return total, parts, out

        monkeypatch.setattr(distill_module, "run_training", run_training)
        monkeypatch.setattr(Distiller, "teacher_targets", teacher_targets)
        monkeypatch.setattr(Distiller, "compute", compute)


def _recover(pruned, teacher, data, out, *flags) -> list[str]:
    return ["recover", str(pruned), "--teacher", str(teacher), "--data", str(data),
            "-o", str(out), *flags]  # fmt: skip


def _pooled(model, tokenizer_dir) -> torch.Tensor:
    """Mean-pooled last hidden states of SENTENCES, computed here (not by prunekit)."""
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.eval()(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def test_recover_encoder_defaults_are_the_sentence_recipe(
    bert_dir, bert_pruned, sentences_file, tmp_path, monkeypatch, capsys
):
    spy = Spy(monkeypatch)
    out = tmp_path / "recovered"
    code = main(_recover(bert_pruned, bert_dir, sentences_file, out, "--steps", "40"))
    assert code == 0, capsys.readouterr().err
    # the pooled embedding plus every block's MSE, on padded sentence batches with masks
    assert spy.target_keys == {"pooled", "layer:encoder.layer.0", "layer:encoder.layer.1"}
    assert spy.parts == {"kd", "hidden"}
    assert any(bool((m == 0).any()) for m in spy.masks)  # padding, masked out
    assert spy.calls["lr"] == 5e-4 and spy.calls["warmup"] == 10
    # dropout off (the two losses of one batch agree), bfloat16 autocast
    assert spy.twice[0] == spy.twice[1]
    assert torch.bfloat16 in spy.linear_dtypes
    # the teacher ran once per batch (the cache), not once per step
    batches = len(spy.masks)
    assert batches < 40 and spy.teacher_runs == batches
    teacher = transformers.BertModel.from_pretrained(bert_dir)
    before, after = pk.load(bert_pruned), pk.load(out)
    # embeddings frozen bit for bit; the pruned zeros held; the rest trained
    for name, w in before.state_dict().items():
        new = after.state_dict()[name]
        if name.startswith("embeddings."):
            assert torch.equal(new, w), name
        elif name.endswith("weight") and (w == 0).float().mean() > 0.5:  # pruned
            assert not new[w == 0].any(), name
    assert not torch.equal(
        after.state_dict()["encoder.layer.0.attention.self.query.weight"],
        before.state_dict()["encoder.layer.0.attention.self.query.weight"],
    )
    ref = _pooled(teacher, bert_dir)
    cos_before = float(torch.nn.functional.cosine_similarity(_pooled(before, bert_dir), ref).mean())
    cos_after = float(torch.nn.functional.cosine_similarity(_pooled(after, bert_dir), ref).mean())
    assert cos_after > cos_before
    recipe = json.loads((out / "prunekit.json").read_text())["recovery"]["recipe"]
    assert recipe["kind"] == "encoder" and recipe["split"] == "sentences"


def test_recover_options_override_the_recipe(
    bert_dir, bert_pruned, sentences_file, tmp_path, monkeypatch, capsys
):
    spy = Spy(monkeypatch)
    out = tmp_path / "recovered"
    flags = ["--steps", "6", "--target", "hidden", "--layers", "encoder.layer.1", "--dropout",
             "--no-freeze-embeddings", "--no-cache-teacher", "--bf16", "no", "--lr", "2e-3",
             "--warmup", "2", "--batch-size", "5", "--split", "windows",
             "--seq-len", "12"]  # fmt: skip
    code = main(_recover(bert_pruned, bert_dir, sentences_file, out, *flags))
    assert code == 0, capsys.readouterr().err
    assert spy.target_keys == {"hidden", "layer:encoder.layer.1"}
    assert spy.twice[0] != spy.twice[1]  # dropout on: two passes differ
    assert spy.linear_dtypes == {torch.float32}
    # every step, twice more for the probe of the first step, once to size the projections
    assert spy.teacher_runs == 6 + 2 + 1
    assert spy.calls["lr"] == 2e-3 and spy.calls["warmup"] == 2
    assert {tuple(m.shape) for m in spy.masks[1:]} <= {(k, 12) for k in range(1, 6)}
    assert all(bool(m.all()) for m in spy.masks)  # windows: no padding
    before, after = pk.load(bert_pruned), pk.load(out)
    emb = "embeddings.word_embeddings.weight"
    assert not torch.equal(before.state_dict()[emb], after.state_dict()[emb])  # trained


def test_recover_layers_none_and_a_cpu_budget(
    bert_dir, bert_pruned, sentences_file, tmp_path, monkeypatch, capsys
):
    spy = Spy(monkeypatch)
    out = tmp_path / "recovered"
    # no --steps: a CPU budget far below one step's cost stops after the first step
    code = main(_recover(bert_pruned, bert_dir, sentences_file, out, "--layers", "none",
                         "--cpu-minutes", "1e-6"))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert spy.parts == {"kd"} and spy.target_keys == {"pooled"}
    assert json.loads((out / "prunekit.json").read_text())["recovery"]["steps"] == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "3", "--target", "bogus"], "pooled"),  # argparse lists the choices
        (["--steps", "3", "--split", "lines"], "sentences"),
        (["--steps", "3", "--dropout", "maybe"], "yes"),
        (["--steps", "3", "--lr", "0"], "--lr must be > 0"),
        (["--steps", "3", "--layer-weight", "-1"], "--layer-weight must be >= 0"),
        (["--steps", "3", "--layers", "encoder.nope"], "valid: all, none"),
        (["--lr", "1e-3"], "--steps N, --cpu-minutes M"),
    ],
)
def test_recover_bad_options_are_refused_and_nothing_is_written(
    bert_dir, bert_pruned, sentences_file, tmp_path, capsys, flags, message
):
    out = tmp_path / "recovered"
    try:
        code = main(_recover(bert_pruned, bert_dir, sentences_file, out, *flags))
    except SystemExit as e:  # argparse: a usage error
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_recover_causal_lm_defaults_are_the_logits_recipe(llama_dir, tmp_path, monkeypatch, capsys):
    spy = Spy(monkeypatch)
    pruned, out = tmp_path / "pruned", tmp_path / "recovered"
    assert main(["prune", str(llama_dir), "--sparsity", "0.5", "-o", str(pruned)]) == 0
    code = main(_recover(pruned, llama_dir, _train_file(tmp_path), out, "--steps", "3"))
    assert code == 0, capsys.readouterr().err
    assert spy.target_keys == {"logits"} and spy.parts == {"kd"}
    assert spy.calls["lr"] == 1e-4 and spy.calls["warmup"] == 5
    assert spy.teacher_runs == 3 + 2  # every step (no cache), and the probe's two
    assert spy.linear_dtypes == {torch.float32}
    assert max(m.shape[0] for m in spy.masks) == 4 and {m.shape[1] for m in spy.masks} == {128}
    emb = "model.embed_tokens.weight"
    assert torch.equal(pk.load(pruned).state_dict()[emb], pk.load(out).state_dict()[emb])


def test_prune_recover_steps_takes_the_same_recipe_options(
    bert_dir, sentences_file, tmp_path, monkeypatch, capsys
):
    from prunekit.train.distill import Distiller

    recover_module = importlib.import_module("prunekit.train.recover")

    seen: dict = {}
    real_run, real_targets = recover_module.run_training, Distiller.teacher_targets

    def run_training(model, data, steps, loss_of, **kwargs):
        seen.update(kwargs, data=data)
        return real_run(model, data, steps, loss_of, **kwargs)

    def teacher_targets(self, batch):
        seen.setdefault("keys", set()).update(real_targets(self, batch))
        return real_targets(self, batch)

    monkeypatch.setattr(recover_module, "run_training", run_training)
    monkeypatch.setattr(Distiller, "teacher_targets", teacher_targets)
    out = tmp_path / "o"
    code = main(["prune", str(bert_dir), "--sparsity", "0.5", "--seq-len", "16",
                 "--recover-steps", "3", "--prune-steps", "2", "--data", str(sentences_file),
                 "--recover-layers", "none", "--recover-lr", "1e-3", "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    # the encoder recipe: pooled target, cached teacher (indices), bfloat16, dropout off
    assert seen["keys"] == {"pooled"} and isinstance(seen["data"], range)
    assert seen["lr"] == 1e-3 and seen["autocast"] == torch.bfloat16 and seen["dropout"] is False
    dense = transformers.BertModel.from_pretrained(bert_dir)
    pruned = pk.load(out)
    emb = "embeddings.word_embeddings.weight"
    assert torch.equal(dense.state_dict()[emb], pruned.state_dict()[emb])  # frozen
    recovery = json.loads((out / "prunekit.json").read_text())["recovery"]
    assert recovery["recipe"]["layers"] == "none" and recovery["recipe"]["lr"] == 1e-3
    bad = tmp_path / "bad"
    code = main(["prune", str(bert_dir), "--sparsity", "0.5", "--recover-steps", "3",
                 "--data", str(sentences_file), "--recover-layers", "x.y",
                 "-o", str(bad)])  # fmt: skip
    assert code == 2 and "valid: all, none" in capsys.readouterr().err
    assert not bad.exists()
