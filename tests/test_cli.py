"""The ``prunekit`` console script, run as a user runs it: flags, help, errors, prune -o."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import prunekit as pk
from prunekit.cli import build_parser, main
from prunekit.commands import COMMANDS
from prunekit.commands.base import plugin_names
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


def one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


# ---- help and flags -----------------------------------------------------------------------------


def test_console_script_help():
    assert SCRIPT.exists(), "install the package (make install) to get the console script"
    proc = cli("--help")
    assert "usage: prunekit" in proc.stdout
    assert all(name in proc.stdout for name in COMMANDS.names())


@pytest.mark.parametrize("argv", [["--help"], ["prune", "--help"], ["bench", "--help"]])
def test_help_imports_no_torch(argv):
    code = (
        f"import sys\nfrom prunekit.cli import main\ntry:\n    main({argv!r})\n"
        "except SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO TORCH')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: prunekit" in proc.stdout and proc.stdout.strip().endswith("NO TORCH")


@pytest.mark.parametrize("command", COMMANDS.names())
def test_help(command, capsys):
    code, out, _ = run_main(command, "--help", capsys=capsys)
    assert code == 0 and f"usage: prunekit {command}" in out


def subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.choices and "prune" in a.choices)
    return dict(action.choices)


def test_every_option_has_help_text():
    for name, parser in subparsers().items():
        for action in parser._actions:
            if "-h" in action.option_strings:
                continue
            assert action.help and action.help.strip(), f"prunekit {name}: {action.dest}"


def test_one_set_of_flag_names_across_commands():
    flags = {s for p in subparsers().values() for a in p._actions for s in a.option_strings}
    assert {"--seq-len", "--example-shape", "--batch-size"} <= flags
    assert not flags & {"--seqlen", "--input-shape", "--input_shape", "--seq_len"}


def test_help_lists_every_registered_plugin():
    from prunekit.allocation import ALLOCATIONS
    from prunekit.criteria import CRITERIA
    from prunekit.formats import FORMATS
    from prunekit.granularity import GRANULARITIES

    for package, registry in [("granularity", GRANULARITIES), ("criteria", CRITERIA),
                              ("formats", FORMATS), ("allocation", ALLOCATIONS)]:  # fmt: skip
        assert plugin_names(package) == sorted(registry.names()), package
    prune = subparsers()["prune"]
    helps = {a.dest: a.help for a in prune._actions}
    assert all(g in helps["granularity"] for g in GRANULARITIES.names())
    assert all(c in helps["criterion"] for c in CRITERIA.names())


def test_every_expected_command_is_registered():
    assert {"prune", "report", "demo", "bench", "eval", "export"} <= set(COMMANDS.names())


def test_mistyped_option_gets_a_suggestion(capsys):
    code, _, err = run_main("prune", FACTORY, "--sparsty", "0.5", "-o", "x", capsys=capsys)
    assert "did you mean --sparsity" in one_line_error(code, err)
    code, _, err = run_main("bench", "x", "--seqlen", "8", capsys=capsys)
    assert "did you mean --seq-len" in one_line_error(code, err)
    code, _, err = run_main("prnue", capsys=capsys)
    assert "did you mean 'prune'" in one_line_error(code, err)


# ---- user errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["prune", FACTORY, "--sparsity", "1.5", "-o", "x"], ["[0, 1)"]),
        (["prune", FACTORY, "--criterion", "magic", "--sparsity", "0.5", "-o", "x"],
         ["magic", "magnitude"]),
        (["prune", FACTORY, "--granularity", "5:4", "-o", "x"], ["0 < N < M"]),
        (["prune", "no_such_module:factory", "--sparsity", "0.5", "-o", "x"], ["cannot import"]),
        (["prune", "/no/such/dir", "--sparsity", "0.5", "-o", "x"], ["no such directory"]),
        (["prune", FACTORY, "--sparsity", "0.5", "--example-shape", "1,a", "-o", "x"],
         ["--example-shape", "1,a"]),
        (["prune", FACTORY, "--sparsity", "0.5", "--format", "zip", "-o", "x"], ["zip", "rice"]),
        (["report", FACTORY, "--weights", "/no/such/file.safetensors"], ["cannot read weights"]),
        (["bench", FACTORY, "--example-shape", "0,64"], ["--example-shape"]),
    ],
)  # fmt: skip
def test_errors_are_one_clear_line(args, words, capsys):
    line = one_line_error(*run_main(*args, capsys=capsys)[::2])
    for word in words:
        assert word in line


def test_output_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    code, _, err = run_main("prune", FACTORY, "--sparsity", "0.5", "-o", str(target),
                            capsys=capsys)  # fmt: skip
    assert "is a file" in one_line_error(code, err)
    assert target.read_text() == "keep me"


def test_hf_folder_with_broken_config_is_one_line(tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "hidden_size": ')
    code, _, err = run_main("prune", str(folder), "--sparsity", "0.5", "-o",
                            str(tmp_path / "o"), capsys=capsys)  # fmt: skip
    assert "config.json" in one_line_error(code, err)
    assert not (tmp_path / "o").exists()


def test_console_script_error_is_one_line_without_traceback():
    proc = cli("prune", FACTORY, "--sparsity", "1.5", "-o", "x", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "prunekit prune: error: sparsity must be in [0, 1), got 1.5"


# ---- report -------------------------------------------------------------------------------------


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


# ---- prune -o OUT -------------------------------------------------------------------------------


@pytest.fixture
def cnn_weights(tmp_path) -> Path:
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    save_file(digits_cnn().state_dict(), str(weights))
    return weights


def test_prune_writes_the_smallest_format_and_loads_exactly(cnn_weights, tmp_path):
    out = tmp_path / "out"
    cli("prune", FACTORY, "--weights", str(cnn_weights), "--granularity", "2:4", "--exclude", "0",
        "-o", str(out))  # fmt: skip
    # the same prune in this process, from the same weights
    expected = digits_cnn()
    expected.load_state_dict(load_file(str(cnn_weights)))
    pk.prune(expected, granularity="2:4", exclude=["0"])
    expected = pk.finalize(expected).state_dict()
    loaded = pk.load(out, model=digits_cnn()).state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    w = loaded["6.weight"]
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    assert not (out / "model.safetensors").exists()  # nothing another library would misread
    stored = load_file(str(out / "prunekit.safetensors"))
    assert "6.weight::values" in stored  # compressed, not dense
    model_bytes = (out / "prunekit.safetensors").stat().st_size
    assert model_bytes < 0.75 * cnn_weights.stat().st_size
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["config"]["granularity"] == "2:4"
    assert meta["baseline"]["weights"] == str(cnn_weights.resolve())
    card = (out / "README.md").read_text()
    assert "2:4" in card and "pk.load" in card and "6.weight" in card
    proc = cli("report", str(out), "--json")
    rows = {r["name"]: r for r in json.loads(proc.stdout)["layers"]}
    assert rows["6.weight"]["sparsity"] == pytest.approx(0.5)
    assert rows["6.weight"]["nm_valid"] is True


def test_prune_format_dense_keeps_plain_keys(cnn_weights, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_main("prune", FACTORY, "--weights", str(cnn_weights), "--sparsity", "0.5",
                            "--format", "dense", "-o", str(out), capsys=capsys)  # fmt: skip
    assert code == 0, err
    assert set(load_file(str(out / "model.safetensors"))) == set(digits_cnn().state_dict())


@pytest.fixture
def bert_dir(tmp_path) -> Path:
    """A tiny BERT (4 heads of 8) saved as a Hugging Face folder with a tokenizer and
    sentence-transformers files."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "bert"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz",
             "the", "model", "is", "small", "pruned", "fast", "##s", "##ed"]  # fmt: skip
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "modules.json").write_text('[{"idx": 0, "name": "0", "path": ""}]')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 32}')
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"the unpruned model's export")
    return folder


def test_prune_hf_folder_is_complete(bert_dir, tmp_path, capsys):
    from transformers import AutoTokenizer, BertModel

    out = tmp_path / "out"
    code, text, err = run_main("prune", str(bert_dir), "--sparsity", "0.5", "-o", str(out),
                               capsys=capsys)  # fmt: skip
    assert code == 0, err
    for name in ["vocab.txt", "tokenizer_config.json", "tokenizer.json", "modules.json",
                 "1_Pooling/config.json", "sentence_bert_config.json"]:  # fmt: skip
        assert filecmp.cmp(bert_dir / name, out / name, shallow=False), name
    assert not (out / "onnx").exists()  # another runtime's export of the unpruned model
    sentence = "the small models is pruned fast"
    assert (AutoTokenizer.from_pretrained(out)(sentence)["input_ids"]
            == AutoTokenizer.from_pretrained(bert_dir)(sentence)["input_ids"])  # fmt: skip
    small = pk.load(out)
    w = small.encoder.layer[0].intermediate.dense.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)
    dense = BertModel.from_pretrained(bert_dir)
    kept = w != 0
    assert torch.equal(w[kept], dense.encoder.layer[0].intermediate.dense.weight[kept])
    assert "x smaller" in text and "carried over 6 file(s)" in text


def test_prune_heads_shrinks_and_patches_the_config(bert_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, err = run_main(
        "prune", str(bert_dir), "--granularity", "head", "--sparsity", "0.5", "-o", str(out),
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert (out / "prunekit.safetensors").exists()  # a fresh BERT's zero biases compress
    assert "32x32 → 16x32" in text and "before shrink" in text and "loads it too" not in text
    assert "plain `transformers` refuses the folder" in (out / "README.md").read_text()
    out = tmp_path / "dense"
    with pytest.warns(UserWarning, match="plain transformers refuses"):  # BERT: head size = h / n
        run_main("prune", str(bert_dir), "--granularity", "head", "--sparsity", "0.5", "-o",
                 str(out), "--format", "dense", capsys=capsys)  # fmt: skip
    from transformers import AutoModel

    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # refused, not misread
        AutoModel.from_pretrained(out)
    small = pk.load(out)
    assert type(small).__name__ == "BertModel"
    assert small.encoder.layer[0].attention.self.query.out_features == 16  # 2 of 4 heads left
    config = json.loads((out / "config.json").read_text())
    assert config["num_attention_heads"] * config.get("head_dim", 8) <= 32
    spec = json.loads((out / "prunekit.json").read_text())["example_inputs"]
    assert spec["kind"] == "dict" and spec["items"]["input_ids"]["shape"][0] == 1


def test_a_uniform_channel_prune_writes_a_folder_plain_transformers_loads(bert_dir, tmp_path,
                                                                         capsys):  # fmt: skip
    from transformers import AutoModel

    out = tmp_path / "out"
    code, text, err = run_main(
        "prune",
        str(bert_dir),
        "--granularity",
        "channel",
        "--sparsity",
        "0.5",
        "-o",
        str(out),
        "--format",
        "dense",
        capsys=capsys,
    )  # fmt: skip (a fresh BERT's zero biases compress: auto would take 3% off with rice)
    assert code == 0, err
    assert "plain transformers loads it too" in text
    assert "Plain `transformers` loads it too" in (out / "README.md").read_text()
    plain, ours = AutoModel.from_pretrained(out).eval(), pk.load(out).eval()
    assert plain.config.intermediate_size == 32
    x = torch.randint(5, 64, (2, 8))
    with torch.no_grad():
        assert torch.equal(
            plain(input_ids=x).last_hidden_state, ours(input_ids=x).last_hidden_state
        )


def test_prune_channels_shrinks_a_factory_model(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prune", FACTORY, "--granularity", "channel", "--sparsity", "0.5", "-o", str(out)]
    code, _, err = run_main(*args, capsys=capsys)
    assert "--example-shape" in one_line_error(code, err)  # a factory model has no dummy inputs
    code, _, err = run_main(*args, "--example-shape", "2,1,8,8", capsys=capsys)
    assert code == 0, err
    code, text, _ = run_main("report", str(out), "--json", capsys=capsys)
    full = sum(p.numel() for p in digits_cnn().parameters())
    assert code == 0 and json.loads(text)["totals"]["params"] <= 0.75 * full


@pytest.mark.slow
def test_demo_quick_smoke():
    proc = cli("demo", "--quick", "--json")
    rows = json.loads(proc.stdout)
    by = {(r["network"], r["model"]): r for r in rows}
    assert next(r["model"] for r in rows if r["network"] == "CNN") == "dense"
    assert by[("CNN", "90% unstructured")]["sparsity"] == pytest.approx(0.9, abs=2e-3)
    shrunk = by[("MLP", "50% channels, shrunk")]
    assert shrunk["params"] < 0.5 * by[("MLP", "dense")]["params"]
    assert shrunk["less_memory"] > 1.9  # physically smaller: fewer bytes resident
    assert by[("CNN", "90% unstructured")]["smaller"] > 3  # compressed on disk
    assert all(r["disk_bytes"] > 0 and r["latency_ms"] > 0 for r in rows)
    assert all(0.1 <= r["accuracy"] <= 1 for r in rows)  # above chance even after a few epochs
    assert len({r["epochs"] for r in rows}) == 1  # every row trained as long


def test_demo_table_is_not_cut_in_a_log(monkeypatch, capsys):
    import prunekit.demo
    from prunekit.demo import DemoRow

    rows = [DemoRow("MLP", "90% unstructured", 0.97, 0.0, 0.9, 100, 1000, 1000, 0.4, 8.7, 6.5,
                    3.0, "1/2", 8)]  # fmt: skip
    monkeypatch.setattr(prunekit.demo, "run_demo", lambda settings, progress: rows)
    code, out, _ = run_main("demo", capsys=capsys)  # stdout is captured: not a terminal
    assert code == 0
    line = next(ln for ln in out.splitlines() if "90% unstructured" in ln)
    assert "(3.00x)" in line and "…" not in out
    assert "x smaller / less / faster" in " ".join(out.split())  # the legend
