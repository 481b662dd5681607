"""pk.save / pk.load: round trips, layouts, atomicity, the shape manifest, Hugging Face models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import prunekit as pk
from prunekit.errors import CheckpointError, ConfigError
from prunekit.formats import FORMATS
from prunekit.formats import checkpoint as ckpt
from prunekit.formats import header as hdr
from prunekit.formats.manifest import MANIFEST_ATTRS, apply_shape_manifest, shape_manifest
from tests.ckpt_models import MLP, Net, ids, trained

TESTS = Path(__file__).parent


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def pruned_net(**kw) -> Net:
    net = trained()
    pk.prune(net, **({} if "granularity" in kw else {"sparsity": 0.9}), **kw)
    return net


def test_granularity_travels_with_the_checkpoint(tmp_path):
    net = pruned_net(granularity="2:4")
    pk.save(net, tmp_path / "ck")
    rows = pk.report(pk.load(tmp_path / "ck", model=Net())).layers
    assert rows and all(r.granularity == "2:4" and r.nm_valid for r in rows)


def test_masked_model_round_trip_restores_effective_weights(tmp_path):
    net = pruned_net()
    pk.save(net, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["prunekit.json", "prunekit.safetensors"]
    loaded = pk.load(tmp_path, model=Net()).eval()
    assert same_state(net, loaded)
    assert torch.equal(net(ids()), loaded(ids()))
    header = json.loads((tmp_path / "prunekit.json").read_text())
    assert not any("_pk_mask" in k for k in header["tensors"])


def test_header_records_version_formats_config_report_and_sizes(tmp_path):
    net = trained()
    pruner = pk.prune(net, 0.9)
    pk.save(net, tmp_path, config=pruner, extra={"cli": {"argv": ["prune"]}})
    header = ckpt.read_header(tmp_path)
    assert header["prunekit"]["version"] == pk.__version__
    assert header["config"]["sparsity"] == 0.9
    assert header["cli"] == {"argv": ["prune"]}
    assert header["report"]["totals"]["target_sparsity"] > 0.85
    entry = header["tensors"]["fc1.weight"]
    assert entry["format"] == "rice" and entry["dtype"] == "float32" and entry["shape"] == [64, 32]
    storage = header["storage"]
    assert storage["bits_per_weight"] < 0.3 * 32
    assert storage["limit_bits_per_weight"] <= storage["bits_per_weight"]
    assert header["tensors"]["head.weight"]["alias"] == "embed.weight"
    rows = {r["name"]: r for r in hdr.storage_rows(header)}
    assert "head.weight" not in rows and rows["fc1.weight"]["numel"] == 64 * 32
    assert (
        rows["fc1.weight"]["bits_per_weight"] <= 1.15 * rows["fc1.weight"]["limit_bits_per_weight"]
    )


@pytest.mark.parametrize("name", FORMATS.names())
def test_every_format_round_trips_a_model(tmp_path, name):
    net = pruned_net(granularity="2:4", exclude=["conv"])  # conv's input dim 3*64 fits too
    pk.save(net, tmp_path, format=name)
    formats = {e["format"] for e in ckpt.read_header(tmp_path)["tensors"].values()}
    assert formats <= {name, "dense"}
    assert same_state(net, pk.load(tmp_path, model=Net()))


def test_conv_and_two_four_use_the_input_last_layout(tmp_path):
    net = pruned_net(granularity="2:4")
    pk.save(net, tmp_path)
    entry = ckpt.read_header(tmp_path)["tensors"]["conv.weight"]
    assert entry["format"] == "nm" and entry["perm"] == [0, 2, 1]
    assert entry["meta"] == {"n": 2, "m": 4}
    assert same_state(net, pk.load(tmp_path, model=Net()))


def test_finalized_negative_zeros_are_stored_as_zero(tmp_path):
    net = pruned_net()
    pk.finalize(net)
    pk.save(net, tmp_path)
    loaded = pk.load(tmp_path, model=Net()).eval()
    assert ckpt.read_header(tmp_path)["tensors"]["fc1.weight"]["format"] == "rice"
    assert torch.equal(net(ids()), loaded(ids()))


def test_saved_dtypes_win_over_the_fresh_model(tmp_path):
    net = pruned_net().half()
    pk.save(net, tmp_path)
    loaded = pk.load(tmp_path, model=Net())
    assert loaded.fc1.weight.dtype == torch.float16
    assert loaded.bn.num_batches_tracked.dtype == torch.int64
    assert same_state(net, loaded)
    assert loaded.head.weight is loaded.embed.weight  # still tied


def test_dense_writes_plain_names(tmp_path):
    net = pruned_net()
    pk.save(net, tmp_path, dense=True)
    stored = load_file(tmp_path / "model.safetensors")
    assert set(stored) == set(net.state_dict()) - {"head.weight"}  # tied: stored once
    assert torch.equal(stored["fc1.weight"], net.fc1.weight)


@pytest.mark.parametrize(("layer", "compressed"), [(2, False), (1, True)])
def test_auto_compresses_only_where_it_saves_one_percent(tmp_path, layer, compressed):
    """90% zeros in the 32x10 layer save 0.3% of the file (stored dense, a plain file), in the
    256x32 layer 8% (stored compressed)."""
    torch.manual_seed(0)
    mlp = MLP((256, 256, 32, 10))
    with torch.no_grad():
        w = mlp.layers[layer].weight
        w.mul_(torch.rand_like(w) < 0.1)
    pk.save(mlp, tmp_path)
    summary = json.loads((tmp_path / hdr.HEADER_FILE).read_text())["storage"]
    assert (set(summary["formats"]) != {"dense"}) is compressed
    assert (tmp_path / ("prunekit.safetensors" if compressed else "model.safetensors")).exists()
    saving = 1 - summary["bytes"] / summary["dense_bytes"]
    assert saving > 0.05 if compressed else saving == 0
    assert same_state(pk.load(tmp_path, model=MLP((256, 256, 32, 10))), mlp)


def test_bad_arguments_raise_prunekit_errors(tmp_path):
    net = trained()
    with pytest.raises(pk.UnknownChoiceError):
        pk.save(net, tmp_path, format="zip")
    with pytest.raises(ConfigError, match="reserved"):
        pk.save(net, tmp_path, extra={"tensors": 1})
    with pytest.raises(ConfigError, match="JSON"):
        pk.save(net, tmp_path, extra={"x": object()})
    with pytest.raises(ConfigError):
        pk.save("model", tmp_path)
    with pytest.raises(CheckpointError, match="no prunekit checkpoint"):
        pk.load(tmp_path / "nowhere", model=Net())
    pk.save(net, tmp_path)
    with pytest.raises(CheckpointError, match="Hugging Face"):
        pk.load(tmp_path)
    with pytest.raises(CheckpointError, match="does not match"):
        pk.load(tmp_path, model=MLP())


# ---- atomic writes -----------------------------------------------------------------------------


def test_failure_while_writing_keeps_the_earlier_checkpoint(tmp_path, monkeypatch):
    old = pruned_net()
    pk.save(old, tmp_path)

    def crash(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        pk.save(trained(seed=1), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["prunekit.json", "prunekit.safetensors"]
    assert same_state(old, pk.load(tmp_path, model=Net()))


def test_failure_after_the_commit_loads_the_new_checkpoint(tmp_path, monkeypatch):
    pk.save(pruned_net(), tmp_path)
    new = trained(seed=1)
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # after prunekit.json, before prunekit.safetensors
            raise OSError("power cut")
        real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(OSError, match="power cut"):
        pk.save(new, tmp_path)
    monkeypatch.setattr(ckpt.os, "replace", real)
    assert same_state(new, pk.load(tmp_path, model=Net()))
    pk.save(new, tmp_path)  # the next save tidies the leftover temporary
    assert sorted(os.listdir(tmp_path)) == ["prunekit.json", "prunekit.safetensors"]


# ---- shape manifest ----------------------------------------------------------------------------


def hand_shrunk(seed: int = 0) -> MLP:
    """An MLP whose hidden layer lost 16 of its 48 units, as pk.shrink would leave it."""
    torch.manual_seed(seed)
    mlp = MLP().eval()
    keep = torch.arange(0, 48, 3)  # 16 units kept
    small1, small2 = nn.Linear(24, 16), nn.Linear(16, 32)
    with torch.no_grad():
        small1.weight.copy_(mlp.layers[0].weight[keep])
        small1.bias.copy_(mlp.layers[0].bias[keep])
        small2.weight.copy_(mlp.layers[1].weight[:, keep])
        small2.bias.copy_(mlp.layers[1].bias)
    mlp.layers[0], mlp.layers[1] = small1, small2
    return mlp


def test_shrunk_model_loads_into_a_fresh_full_size_instance(tmp_path):
    small = hand_shrunk()
    pk.save(small, tmp_path)
    manifest = ckpt.read_header(tmp_path)["manifest"]["modules"]
    assert manifest["layers.0"]["attrs"]["out_features"] == 16
    assert manifest["layers.0"]["tensors"]["weight"] == [16, 24]
    loaded = pk.load(tmp_path, model=MLP())
    assert loaded.layers[0].out_features == 16 and loaded.layers[1].in_features == 16
    x = torch.randn(3, 24)
    assert torch.equal(small(x), loaded.eval()(x))


def test_manifest_round_trips_tuple_attributes():
    ln = nn.LayerNorm(8)
    ln.weight.data, ln.bias.data, ln.normalized_shape = torch.ones(6), torch.zeros(6), (6,)
    fresh = apply_shape_manifest(nn.LayerNorm(8), shape_manifest(ln))
    assert fresh.normalized_shape == (6,) and fresh.weight.shape == (6,)
    assert "num_key_value_heads" in MANIFEST_ATTRS


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["modules"]["layers.0"]["tensors"].update(weight=[64, 24]),  # grows
        lambda m: m["modules"]["layers.0"]["tensors"].update(weight=[16]),  # rank
        lambda m: m["modules"]["layers.0"]["tensors"].update(weight=[-1, 24]),
        lambda m: m["modules"]["layers.0"]["attrs"].update(forward=3),  # not a size attribute
        lambda m: m["modules"]["layers.0"]["attrs"].update(out_features="16"),
        lambda m: m["modules"].update(ghost={"tensors": {}, "attrs": {}}),
        lambda m: m["modules"]["layers.0"]["tensors"].update(gamma=[1]),
        lambda m: m["modules"]["layers.0"]["dtypes"].update(weight="float16"),  # persistent
    ],
)
def test_malformed_manifests_are_refused_before_touching_the_model(edit):
    manifest = shape_manifest(hand_shrunk())
    edit(manifest)
    fresh = MLP()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError):
        apply_shape_manifest(fresh, manifest)
    after = fresh.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---- a fresh process ---------------------------------------------------------------------------


def test_fresh_process_gives_identical_outputs(tmp_path):
    net = pruned_net(granularity="2:4")
    pk.save(net, tmp_path / "ck")
    expected = net(ids())
    script = (
        "import sys, torch, prunekit as pk\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"  # the parent's: equal sums
        "from tests.ckpt_models import Net, ids\n"
        "model = pk.load(sys.argv[1], model=Net()).eval()\n"
        "masks = pk.MaskState(model).state_dict()\n"
        "torch.save({'out': model(ids()), **masks}, sys.argv[2])\n"  # tensors: weights_only
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS.parent / "src")]),
    }
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ck"), str(tmp_path / "out.pt")],
        check=True, env=env, timeout=120,
    )  # fmt: skip
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(expected, got.pop("out"))
    masks = pk.MaskState(net).state_dict()  # the masks come back in the fresh process too
    assert got.keys() == masks.keys() and all(torch.equal(got[k], masks[k]) for k in masks)


# ---- Hugging Face ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()
    pk.prune(model, 0.8)
    return model


def test_hf_model_is_rebuilt_from_its_directory(tmp_path, gpt2):
    pk.save(gpt2, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    loaded = pk.load(tmp_path)
    x = torch.randint(0, 64, (2, 8))
    assert type(loaded) is type(gpt2) and not loaded.training
    assert torch.equal(gpt2(x).logits, loaded(x).logits)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_hf_dense_export_loads_with_plain_transformers(tmp_path, gpt2):
    from transformers import AutoModelForCausalLM

    pk.save(gpt2, tmp_path, dense=True)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(gpt2(x).logits, plain(x).logits)


def test_hf_dense_export_of_a_shrunk_model_warns(tmp_path, gpt2):
    import copy

    small = pk.finalize(copy.deepcopy(gpt2))
    mlp = small.transformer.h[0].mlp
    mlp.c_fc.weight.data = mlp.c_fc.weight.data[:, :64].clone()  # Conv1D [in, out]: 128 -> 64
    mlp.c_fc.bias.data = mlp.c_fc.bias.data[:64].clone()
    mlp.c_fc.nf = 64
    mlp.c_proj.weight.data = mlp.c_proj.weight.data[:64].clone()
    mlp.c_proj.nx = 64  # as structure.resize keeps it
    with pytest.warns(UserWarning, match="shrunk"):
        pk.save(small, tmp_path, dense=True)
    loaded = pk.load(tmp_path)  # the manifest resizes the freshly built class
    assert loaded.transformer.h[0].mlp.c_fc.nf == 64
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(small(x).logits, loaded(x).logits)


def test_hf_half_precision_llama_round_trips_with_its_rotary_tables(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval().half()
    pk.prune(model, granularity="2:4")
    pk.save(model, tmp_path)
    loaded = pk.load(tmp_path)
    assert loaded.model.rotary_emb.inv_freq.dtype == torch.float16  # a non-persistent buffer
    x = torch.randint(0, 64, (1, 8))
    assert torch.equal(model(x).logits, loaded(x).logits)
