"""Storage under faults and hostile files: concurrent saves, loads that fail without touching the
model, tampered manifests that a genuine save never writes, oversized headers, bad targets."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import CheckpointError, ConfigError, PrunekitError
from prunekit.formats import header as hdr
from prunekit.formats.manifest import MANIFEST_ATTRS
from tests.ckpt_models import MLP, Net, trained


def snapshot(model: nn.Module) -> dict:
    """Everything a load could change: tensors (values, dtypes, shapes), size attributes, masks."""
    return {
        "state": {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()},
        "attrs": {
            (n, a): getattr(m, a)
            for n, m in model.named_modules()
            for a in MANIFEST_ATTRS | {"eps"}
            if a in m.__dict__
        },
        "masks": set(pk.MaskState(model).masks),
    }


def same(a: dict, b: dict) -> bool:
    return (
        a["attrs"] == b["attrs"]
        and a["masks"] == b["masks"]
        and a["state"].keys() == b["state"].keys()
        and all(
            a["state"][k][0] == b["state"][k][0] and torch.equal(a["state"][k][1], b["state"][k][1])
            for k in a["state"]
        )
    )


def assert_load_refused(directory: Path, fresh: nn.Module, match: str | None = None) -> None:
    """Loading ``directory`` into ``fresh`` raises CheckpointError and leaves it bit-identical."""
    before = snapshot(fresh)
    with pytest.raises(CheckpointError, match=match):
        pk.load(directory, model=fresh)
    assert same(before, snapshot(fresh))


def resign(directory: Path, edit) -> None:
    """Apply ``edit`` to prunekit.json and re-sign it, as an attacker who knows the format would."""
    path = directory / hdr.HEADER_FILE
    header = json.loads(path.read_text())
    edit(header)
    header["checksum"] = hdr.checksum(header)
    path.write_text(json.dumps(header))


def hand_shrunk() -> MLP:
    """An MLP whose hidden layer lost 16 of its 48 units, as pk.shrink leaves it."""
    torch.manual_seed(0)
    mlp = MLP().eval()
    keep = torch.arange(0, 48, 3)
    small1, small2 = nn.Linear(24, 16), nn.Linear(16, 32)
    with torch.no_grad():
        small1.weight.copy_(mlp.layers[0].weight[keep])
        small1.bias.copy_(mlp.layers[0].bias[keep])
        small2.weight.copy_(mlp.layers[1].weight[:, keep])
        small2.bias.copy_(mlp.layers[1].bias)
    mlp.layers[0], mlp.layers[1] = small1, small2
    pk.prune(mlp, 0.5)
    return mlp


# ---- concurrent saves --------------------------------------------------------------------------

ROUNDS = 50


def _model(seed: int) -> Net:
    net = trained(seed)
    if seed == 0:
        pk.prune(net, 0.9)
    else:
        pk.prune(net, granularity="2:4")
    return net


def _saver(seed: int, directory: str, barrier, errors) -> None:
    torch.set_num_threads(1)
    net = _model(seed)
    pk.save(net, f"{directory}-ref{seed}")  # what a load must give back when this save wins
    for _ in range(ROUNDS + 1):
        barrier.wait()
        try:
            pk.save(net, directory)
        except BaseException as e:  # reported to the test, which fails on any
            errors.put(f"{type(e).__name__} (PrunekitError: {isinstance(e, PrunekitError)}): {e}")
        barrier.wait()


def test_two_processes_saving_into_one_directory_leave_a_loadable_checkpoint(tmp_path):
    """Every round both processes save at once while this one loads: each load, during and
    after the saves, gives exactly one of the two models with its masks, and no save raises."""
    directory = tmp_path / "ck"
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(3, timeout=120), ctx.Queue()
    workers = [
        ctx.Process(target=_saver, args=(seed, str(directory), barrier, errors)) for seed in (0, 1)
    ]
    for w in workers:
        w.start()
    try:
        barrier.wait()  # round 0: both references are written, and a first checkpoint
        barrier.wait()
        refs = [pk.load(f"{directory}-ref{seed}", model=Net()) for seed in (0, 1)]
        expected = [(r.state_dict(), pk.MaskState(r).state_dict()) for r in refs]
        wins = [0, 0]
        for _ in range(ROUNDS):
            barrier.wait()
            during = pk.load(directory, model=Net())  # concurrent with both saves
            barrier.wait()
            after = pk.load(directory, model=Net())
            for loaded in (during, after):
                state, masks = loaded.state_dict(), pk.MaskState(loaded).state_dict()
                match = [
                    i
                    for i, (s, m) in enumerate(expected)
                    if all(torch.equal(state[k], s[k]) for k in s)
                    and m.keys() == masks.keys()
                    and all(torch.equal(masks[k], m[k]) for k in m)
                ]
                assert len(match) == 1, "a load gave neither model"
            wins[match[0]] += 1
    except BaseException:
        barrier.abort()
        raise
    finally:
        for w in workers:
            w.join(timeout=120)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []
    assert all(w.exitcode == 0 for w in workers)
    assert sorted(p.name for p in directory.iterdir()) == ["prunekit.json", "prunekit.safetensors"]
    print(f"last writer per round: model 0 {wins[0]} times, model 1 {wins[1]} times")


# ---- a failing load leaves the model untouched --------------------------------------------------


def _last_entry(h: dict) -> dict:
    return h["tensors"][list(h["tensors"])[-1]]


FAILING_LOADS = {
    "wrong non-zero count in the last tensor": lambda h: _last_entry(h).update(nnz=1),
    "bad granularity in the report": lambda h: h["report"]["layers"][-1].update(granularity="9:4"),
    "a float tensor declared as integers": lambda h: h["tensors"]["layers.2.bias"].update(
        dtype="int16"
    ),
}


@pytest.mark.parametrize("edit", FAILING_LOADS.values(), ids=FAILING_LOADS.keys())
def test_failed_load_leaves_a_fresh_model_bit_identical(tmp_path, edit):
    pk.save(hand_shrunk().half(), tmp_path)  # the load would resize, cast and mask
    resign(tmp_path, edit)
    assert_load_refused(tmp_path, MLP())


def test_failed_load_into_a_masked_model_keeps_its_masks(tmp_path):
    pk.save(trained(1), tmp_path)
    resign(tmp_path, lambda h: h["tensors"]["fc2.bias"].update(nnz=0))
    net = trained()
    pk.prune(net, 0.5)
    before = snapshot(net)
    with pytest.raises(CheckpointError):
        pk.load(tmp_path, model=net)
    assert same(before, snapshot(net))


# ---- tampered manifests ------------------------------------------------------------------------


def _attrs(h: dict, module: str) -> dict:
    return h["manifest"]["modules"][module]["attrs"]


MLP_TAMPERING = {
    "in_features=-5": lambda h: _attrs(h, "layers.1").update(in_features=-5),
    "in_features that no tensor has": lambda h: _attrs(h, "layers.1").update(in_features=20),
    "out_features kept at the fresh size": lambda h: _attrs(h, "layers.0").update(out_features=48),
    "LayerNorm eps=1e300": lambda h: _attrs(h, "norm").update(eps=1e300),
    "LayerNorm eps=0.5": lambda h: _attrs(h, "norm").update(eps=0.5),
    "normalized_shape that is not the weight's": lambda h: _attrs(h, "norm").update(
        normalized_shape=[16]
    ),
}


@pytest.mark.parametrize("edit", MLP_TAMPERING.values(), ids=MLP_TAMPERING.keys())
def test_manifest_attributes_must_describe_their_tensors(tmp_path, edit):
    small = hand_shrunk()
    pk.save(small, tmp_path)
    x = torch.randn(3, 24)
    assert torch.equal(pk.load(tmp_path, model=MLP()).eval()(x), small.eval()(x))  # genuine: fine
    resign(tmp_path, edit)
    assert_load_refused(tmp_path, MLP(), match="manifest")


def _tiny(name: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name == "bert":
        return transformers.BertModel(
            transformers.BertConfig(
                vocab_size=64,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=32,
            )
        ).eval()
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=64,
        )
    ).eval()


HF_TAMPERING = {
    "bert num_attention_heads=0": (
        "bert",
        lambda h: _attrs(h, "encoder.layer.0.attention.self").update(num_attention_heads=0),
    ),
    "bert num_attention_heads=2 (heads * size != width)": (
        "bert",
        lambda h: _attrs(h, "encoder.layer.0.attention.self").update(num_attention_heads=2),
    ),
    "llama num_key_value_groups=1 (q rows / k rows is 2)": (
        "llama",
        lambda h: _attrs(h, "model.layers.0.self_attn").update(num_key_value_groups=1),
    ),
    "llama rotary table cast to int64": (
        "llama",
        lambda h: h["manifest"]["modules"]["model.rotary_emb"]["dtypes"].update(inv_freq="int64"),
    ),
    "llama rotary table cast to float64 (no tensor is)": (
        "llama",
        lambda h: h["manifest"]["modules"]["model.rotary_emb"]["dtypes"].update(inv_freq="float64"),
    ),
    "llama RMS norm eps=1e300": (
        "llama",
        lambda h: _attrs(h, "model.norm").update(variance_epsilon=1e300),
    ),
}


@pytest.mark.parametrize(("name", "edit"), HF_TAMPERING.values(), ids=HF_TAMPERING.keys())
def test_tampered_hf_manifests_are_refused(tmp_path, name, edit):
    model = _tiny(name)
    pk.prune(model, 0.5)
    pk.save(model, tmp_path)
    pk.load(tmp_path)  # the genuine checkpoint loads
    resign(tmp_path, edit)
    with pytest.raises(CheckpointError, match="manifest"):
        pk.load(tmp_path)


def test_a_float_buffer_saved_as_integers_is_refused(tmp_path):
    odd = trained()
    odd.bn.running_var = odd.bn.running_var.round().to(torch.int64)
    pk.save(odd, tmp_path)
    with pytest.raises(CheckpointError, match="int64"):
        pk.load(tmp_path, model=Net())


def test_a_layout_added_to_a_square_weight_is_refused(tmp_path):
    torch.manual_seed(0)
    square = nn.Sequential(nn.Linear(16, 16))
    pk.prune(square, 0.9)
    pk.save(square, tmp_path)
    entry = hdr.read_header(tmp_path)["tensors"]["0.weight"]
    assert entry["format"] != "dense" and "perm" not in entry
    loaded = pk.load(tmp_path, model=nn.Sequential(nn.Linear(16, 16)))
    assert torch.equal(loaded[0].weight, square[0].weight)
    resign(tmp_path, lambda h: h["tensors"]["0.weight"].update(perm=[1, 0]))  # would transpose
    with pytest.raises(CheckpointError, match="layout"):
        pk.load(tmp_path, model=nn.Sequential(nn.Linear(16, 16)))


def test_a_layout_removed_from_a_conv_is_refused(tmp_path):
    net = trained()
    pk.prune(net, granularity="2:4")
    pk.save(net, tmp_path)
    resign(tmp_path, lambda h: h["tensors"]["conv.weight"].pop("perm"))
    with pytest.raises(CheckpointError):
        pk.load(tmp_path, model=Net())


# ---- sizes, targets and devices ----------------------------------------------------------------


def test_an_oversized_header_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    pk.save(trained(), tmp_path)
    path = tmp_path / hdr.HEADER_FILE
    text = path.read_text()
    path.write_text(text[:-1] + " " * hdr.MAX_HEADER_BYTES + "}")

    def parse(*args, **kwargs):
        raise AssertionError("an oversized header was parsed")

    monkeypatch.setattr(hdr.json, "loads", parse)
    with pytest.raises(CheckpointError, match="larger than"):
        pk.load(tmp_path, model=Net())


def test_save_refuses_a_header_larger_than_the_loader_reads(tmp_path):
    with pytest.raises(ConfigError, match="bytes"):
        pk.save(trained(), tmp_path, extra={"notes": "x" * hdr.MAX_HEADER_BYTES})
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_save_into_a_file_is_a_clear_error(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("not a directory")
    with pytest.raises(ConfigError, match="is a file"):
        pk.save(trained(), target)
    with pytest.raises(ConfigError, match="cannot create"):
        pk.save(trained(), target / "sub")
    assert target.read_text() == "not a directory"


def test_meta_models_are_refused_on_save_and_load(tmp_path):
    with torch.device("meta"):
        ghost = Net()
    with pytest.raises(ConfigError, match="meta"):
        pk.save(ghost, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    pk.save(trained(), tmp_path / "b")
    with pytest.raises(ConfigError, match="meta"):
        pk.load(tmp_path / "b", model=ghost)


def test_a_copied_checkpoint_still_loads_and_old_temporaries_are_ignored(tmp_path):
    pk.save(trained(), tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / ".pk-0123456789ab.prunekit.safetensors.tmp").write_bytes(b"junk")
    loaded = pk.load(tmp_path / "b", model=Net())
    assert torch.equal(loaded.fc1.weight, trained().fc1.weight)
