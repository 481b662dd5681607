"""Loading is safe: mutated or truncated checkpoints raise CheckpointError, never anything else.

Each example copies a real checkpoint, flips bytes of one of its files (or cuts it short) and
loads it. With verification on (the default), a load either fails with CheckpointError or returns
exactly the saved weights. With the checksums switched off, the structural checks alone must still
turn every inconsistency into CheckpointError: no crash, hang, or oversized allocation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunekit as pk
from prunekit.errors import CheckpointError
from prunekit.formats import FORMATS
from prunekit.formats import header as hdr
from tests.ckpt_models import Net, trained

WEIGHTS = "weights"  # model.safetensors or prunekit.safetensors, whichever the save wrote
FILES = [WEIGHTS, "prunekit.json"]
CASES = ["auto", *FORMATS.names()]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """One checkpoint per format (``auto`` mixes them), with the state it must load back."""
    net = trained()
    pk.prune(net, granularity="2:4", include=["fc1", "conv"])
    pk.prune(net, 0.9, include=["fc2"])
    out = {}
    for case in CASES:
        directory = tmp_path_factory.mktemp(case)
        pk.save(net, directory, format=case)
        out[case] = (directory, {k: v.clone() for k, v in net.state_dict().items()})
    return out


def file_of(directory: Path, name: str) -> Path:
    if name == WEIGHTS:
        return next(directory / n for n in hdr.WEIGHT_FILES if (directory / n).exists())
    return directory / name


def mutated_copy(src: Path, dst: Path, name: str, edits: list[tuple[int, int]], cut: int | None):
    shutil.copytree(src, dst)
    path = file_of(dst, name)
    data = bytearray(path.read_bytes())
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    path.write_bytes(bytes(data))


def load_or_refuse(directory: Path, verify: bool) -> dict[str, torch.Tensor] | None:
    try:
        return pk.load(directory, model=Net(), verify=verify).state_dict()
    except CheckpointError:
        return None


mutations = st.tuples(
    st.sampled_from(FILES),
    st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=4),
    st.none() | st.integers(0, 2**20),
)
fuzz = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("verify", [True, False])
@fuzz
@given(mutation=mutations)
def test_mutated_checkpoint_loads_exactly_or_raises(
    saved, tmp_path_factory, case, verify, mutation
):
    src, expected = saved[case]
    dst = tmp_path_factory.mktemp("fuzz") / "ck"
    mutated_copy(src, dst, *mutation)
    state = load_or_refuse(dst, verify)
    if state is None:
        return
    assert state.keys() == expected.keys()
    for k, v in expected.items():
        assert state[k].shape == v.shape and state[k].dtype == v.dtype
        if verify:
            assert torch.equal(state[k], v), f"verified load changed {k}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("verify", [True, False])
def test_truncated_files_raise(saved, tmp_path, case, name, verify):
    src, _ = saved[case]
    size = file_of(src, name).stat().st_size
    for cut in sorted({0, 1, 7, 8, 9, size // 2, size - 1}):
        dst = tmp_path / f"cut{cut}"
        mutated_copy(src, dst, name, [], cut)
        with pytest.raises(CheckpointError):
            pk.load(dst, model=Net(), verify=verify)


def test_missing_files_raise(saved, tmp_path):
    src, _ = saved["auto"]
    for name in FILES:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        file_of(dst, name).unlink()
        with pytest.raises(CheckpointError):
            pk.load(dst, model=Net())


def of_format(header: dict, fmt: str) -> dict:
    return next(e for e in header["tensors"].values() if e["format"] == fmt and "alias" not in e)


TAMPERING = {
    "format is a list": lambda h: of_format(h, "rice").update(format=["rice"]),
    "unknown dtype": lambda h: of_format(h, "rice").update(dtype="complex64"),
    "other dtype": lambda h: of_format(h, "rice").update(dtype="float16"),
    "huge shape": lambda h: of_format(h, "rice").update(shape=[10**12, 32]),
    "negative shape": lambda h: of_format(h, "nm").update(shape=[-16, -12]),
    "huge nnz": lambda h: of_format(h, "rice").update(nnz=10**30),
    "not a permutation": lambda h: of_format(h, "nm").update(perm=[0, 0, 1]),
    "layout of mixed types": lambda h: of_format(h, "nm").update(perm=[0, "1", 2]),
    "dense with a layout": lambda h: of_format(h, "dense").update(perm=[0]),
    "huge rice parameter": lambda h: of_format(h, "rice")["meta"].update(k=10**9),
    "nm with M above the table": lambda h: of_format(h, "nm")["meta"].update(m=64, n=2),
    "nm with N equal to M": lambda h: of_format(h, "nm")["meta"].update(n=4),
    "alias to itself": lambda h: h["tensors"]["head.weight"].update(alias="head.weight"),
    "alias to another shape": lambda h: h["tensors"]["head.weight"].update(alias="fc2.weight"),
    "path traversal": lambda h: h["files"][hdr.weights_file(h)].update(pending="../../x"),
    "schema from the future": lambda h: h["prunekit"].update(schema=2),
    "tensors is a list": lambda h: h.update(tensors=[]),
    "a tensor the model lacks": lambda h: h["tensors"].update(ghost=of_format(h, "dense")),
    "manifest grows a layer": lambda h: h["manifest"]["modules"]["fc2"]["tensors"].update(
        weight=[4096, 32]
    ),
    "manifest sets a method": lambda h: h["manifest"]["modules"]["fc2"]["attrs"].update(forward=1),
    "report with a bad granularity": lambda h: h["report"]["layers"][0].update(granularity="9:4"),
    "report naming a ghost layer": lambda h: h["report"]["layers"][0].update(name="ghost.weight"),
    "report rows not a list": lambda h: h["report"].update(layers={}),
}


@pytest.mark.parametrize("edit", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampered_headers_with_valid_checksums_raise(saved, tmp_path, edit):
    """Edits that keep the JSON well-formed and re-sign it are caught by the structural checks."""
    src, _ = saved["auto"]
    shutil.copytree(src, tmp_path / "ck")
    path = tmp_path / "ck" / "prunekit.json"
    header = json.loads(path.read_text())
    edit(header)
    header["checksum"] = hdr.checksum(header)
    path.write_text(json.dumps(header))
    with pytest.raises(CheckpointError):
        pk.load(tmp_path / "ck", model=Net())


def test_values_turned_to_nan_are_caught_without_checksums(saved, tmp_path):
    """Checkpoints record which tensors were finite; garbage that decodes to NaN is refused."""
    src, _ = saved["auto"]
    shutil.copytree(src, tmp_path / "ck")
    path = file_of(tmp_path / "ck", WEIGHTS)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    begin, _ = json.loads(data[8 : 8 + n])["fc2.bias"]["data_offsets"]  # a dense fp32 tensor
    data[8 + n + begin : 8 + n + begin + 4] = b"\xff\xff\xff\xff"  # a NaN
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="NaN"):
        pk.load(tmp_path / "ck", model=Net(), verify=False)
    with pytest.raises(CheckpointError, match="SHA-256"):
        pk.load(tmp_path / "ck", model=Net())


@pytest.mark.parametrize(
    "text", ['{"a": 1' + "0" * 5000 + "}", "[" * 100_000, '{"a": "\\ud800"}', "\xff"]
)
def test_hostile_json_raises(saved, tmp_path, text):
    src, _ = saved["auto"]
    shutil.copytree(src, tmp_path / "ck")
    (tmp_path / "ck" / "prunekit.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    for verify in (True, False):
        with pytest.raises(CheckpointError):
            pk.load(tmp_path / "ck", model=Net(), verify=verify)
