"""The zoo: 50% channel (and head) pruning of real architectures, shrunk and verified."""

from __future__ import annotations

import warnings

import pytest
import torch

import prunekit as pk
from prunekit.structure.graph import call_model, flatten
from prunekit.structure.shrink import max_rel_error

from .zoo import ATTENTION, INPUTS, ZOO

pytest.importorskip("transformers")

SLOW = {"mobilenet_v2", "efficientnet"}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cases(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _outputs(model, inputs):
    with torch.no_grad():
        return call_model(model.eval(), inputs)


def prune_and_shrink(name: str, granularity: str):
    model, inputs = ZOO[name](), INPUTS[name]()
    before = _params(model)
    reference = _outputs(ZOO[name](), inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unexpected "left unpruned" warning in the zoo
        pk.prune(model, 0.5, granularity=granularity, example_inputs=inputs)
    small = pk.shrink(model, inputs)
    return model, small, inputs, before, reference


@pytest.mark.parametrize("name", _cases(ZOO))
def test_channel(name):
    masked, small, inputs, before, reference = prune_and_shrink(name, "channel")
    assert _params(small) <= 0.75 * before
    assert max_rel_error(_outputs(masked, inputs), _outputs(small, inputs)) <= 1e-4
    # the interface keeps its shapes: classes, vocabulary, hidden width of base encoders
    for a, b in zip(flatten(reference), flatten(_outputs(small, inputs)), strict=True):
        if isinstance(a, torch.Tensor):
            assert a.shape == b.shape


@pytest.mark.parametrize("name", _cases(sorted(ATTENTION)))
def test_head(name):
    masked, small, inputs, before, _ = prune_and_shrink(name, "head")
    assert _params(small) < before
    assert max_rel_error(_outputs(masked, inputs), _outputs(small, inputs)) <= 1e-4


_SAVE_LOAD = """
import sys, torch
sys.path.insert(0, {root!r})
import prunekit as pk
from tests.structure.zoo import ZOO, INPUTS
from prunekit.structure.graph import call_model, flatten
model = pk.load({path!r}, model=ZOO[{name!r}]())
assert type(model).__name__ == {cls!r}, type(model).__name__
with torch.no_grad():
    out = call_model(model.eval(), INPUTS[{name!r}]())
torch.save([t for t in flatten(out) if isinstance(t, torch.Tensor)], {dump!r})
"""


@pytest.mark.parametrize("name", _cases(ZOO))
def test_save_load_round_trip_in_a_fresh_process(name, tmp_path):
    """Shrunk models rebuild from their original class plus the shape manifest, no pickle."""
    import subprocess
    import sys
    from pathlib import Path

    if not hasattr(pk, "save") or not hasattr(pk, "load"):
        pytest.skip("pk.save / pk.load are not on this branch yet")
    _, small, inputs, _, _ = prune_and_shrink(name, "channel")
    if name in ATTENTION:
        pk.prune(small, 0.5, granularity="head", example_inputs=inputs)
        small = pk.shrink(small, inputs)
    pk.save(small, tmp_path / "model")
    dump = tmp_path / "out.pt"
    root = str(Path(__file__).resolve().parents[2])
    code = _SAVE_LOAD.format(
        root=root, path=str(tmp_path / "model"), name=name, cls=type(small).__name__, dump=str(dump)
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
    expected = [t for t in flatten(_outputs(small, inputs)) if isinstance(t, torch.Tensor)]
    got = torch.load(dump, weights_only=True)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
