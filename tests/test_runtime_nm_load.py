"""``pk.load(directory, sparse=True)``: N:M-packed weights load straight onto ``prunekit_nm``.

The reference is the dense path: ``pk.load`` (which decodes every weight) followed by
``pk.sparsify(..., kernels=["prunekit_nm"])``. The direct path must give the same packed tensors
and bit-identical outputs, without ever decoding those weights to dense.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.errors import CheckpointError, ConfigError
from prunekit.formats.nm import NMPacked
from prunekit.runtime import DecisionCache, SparseLinear, get_kernel, sparsify
from prunekit.runtime.kernels.nm import PATTERNS, packed_from_nm_format
from tests.test_runtime_sparsify import FakeTimer


def net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, 8)
    )


@pytest.fixture(autouse=True)
def compiled():
    if not get_kernel("prunekit_nm").available():
        pytest.skip("no compiled kernels here")


def saved(tmp_path, granularity: str) -> nn.Module:
    torch.manual_seed(0)
    model = net()
    pk.prune(model, granularity=granularity)
    pk.finalize(model)
    pk.save(model, tmp_path)
    return model


def entries(directory) -> dict:
    return json.loads((directory / "prunekit.json").read_text())["tensors"]


@pytest.mark.parametrize("granularity", ["2:4", "1:4", "4:8"])
def test_sparse_load_equals_dense_load_then_sparsify(tmp_path, granularity, monkeypatch):
    model = saved(tmp_path, granularity)
    header = entries(tmp_path)
    # the layers whose weight the checkpoint stores as nm in a pattern the kernel runs
    direct = {
        int(name.split(".")[0])
        for name, e in header.items()
        if name.endswith("weight")
        and e["format"] == "nm"
        and (e["meta"]["n"], e["meta"]["m"]) in PATTERNS
    }
    assert direct  # the test means something: some layers go straight onto the kernel
    reference = pk.load(tmp_path, model=net())
    sparsify(
        reference,
        timer=FakeTimer({"dense": 1.0, "prunekit_nm": 0.3}),
        cache=DecisionCache(),
        kernels=["prunekit_nm"],
    )

    def no_dense_decode(*args, **kwargs):
        raise AssertionError("an nm weight was decoded to dense")

    monkeypatch.setattr(NMPacked, "decode", no_dense_decode)
    loaded = pk.load(tmp_path, model=net(), sparse=True)
    for i in (0, 2, 4):
        layer = loaded[i]
        if i not in direct:
            assert isinstance(layer, nn.Linear)
            continue
        assert isinstance(layer, SparseLinear) and layer.kernel == "prunekit_nm"
        assert torch.equal(layer.bias, model[i].bias)
        ref = reference[i]
        assert all(torch.equal(t, ref.packed[k]) for k, t in layer.packed.items())
        # the kernel's weight is the saved one, from an independent dense product
        w = model[i].weight.detach()
        x = torch.randn(3, w.shape[1])
        with torch.no_grad():
            assert torch.allclose(layer(x), F.linear(x, w, model[i].bias), rtol=1e-5, atol=1e-6)
    for rows in (1, 5):
        x = torch.randn(rows, 64)
        with torch.no_grad():
            assert torch.equal(loaded(x), reference(x))


def test_sparse_load_without_nm_weights_warns_and_loads_dense(tmp_path):
    torch.manual_seed(0)
    model = net()
    pk.prune(model, 0.7)  # unstructured: not stored as nm
    pk.finalize(model)
    pk.save(model, tmp_path)
    with pytest.warns(UserWarning, match="everything loads dense"):
        loaded = pk.load(tmp_path, model=net(), sparse=True)
    assert not any(isinstance(m, SparseLinear) for m in loaded.modules())
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_corrupt_nm_parts_are_refused_before_the_model_changes(tmp_path):
    saved(tmp_path, "2:4")
    # zero the first stored value of layer 0 in place (same file size; verify=False skips the hash)
    path = tmp_path / "prunekit.safetensors"
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    start = 8 + size + json.loads(data[8 : 8 + size])["0.weight::values"]["data_offsets"][0]
    assert struct.unpack("<f", data[start : start + 4])[0] != 0.0
    data[start : start + 4] = bytes(4)
    path.write_bytes(bytes(data))
    target = net()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"0\.weight: decodes to \d+ non-zeros"):
        pk.load(tmp_path, model=target, verify=False, sparse=True)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    assert isinstance(target[0], nn.Linear)


def test_sparse_must_be_a_bool(tmp_path):
    saved(tmp_path, "2:4")
    with pytest.raises(ConfigError, match="sparse must be True or False"):
        pk.load(tmp_path, model=net(), sparse="yes")


def test_packed_from_nm_format_checks_its_parts():
    # 4 x 8 at 2:4: 8 groups, 3 bits of pattern rank each (3 bytes), 16 values
    good = {"index": torch.zeros(3, dtype=torch.uint8), "values": torch.ones(16)}
    assert packed_from_nm_format(good, {"n": 2, "m": 4}, (4, 8))["values"].shape == (4, 16)
    with pytest.raises(CheckpointError, match="unknown meta keys"):
        packed_from_nm_format(good, {"n": 2, "m": 4, "k": 1}, (4, 8))
    with pytest.raises(CheckpointError, match=r"expected 1-D torch\.float32"):
        packed_from_nm_format({**good, "values": torch.ones(16).double()}, {"n": 2, "m": 4}, (4, 8))
    with pytest.raises(CheckpointError, match="has 15 elements"):
        packed_from_nm_format({**good, "values": torch.ones(15)}, {"n": 2, "m": 4}, (4, 8))
    with pytest.raises(ConfigError, match="not 3:16"):
        packed_from_nm_format(good, {"n": 3, "m": 16}, (4, 16))
