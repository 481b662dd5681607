"""``prunekit recover``: prune a tiny Llama directory with the CLI, distil it back on a text file,
and check the zeros held and the student moved towards the teacher."""

from __future__ import annotations

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
