"""The zoo: 50% channel (and head) pruning of real architectures, shrunk and verified."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

import prunekit as pk
from prunekit.outputs import max_rel_error
from prunekit.structure.graph import call_model, flatten

from .zoo import ATTENTION, CHANNEL_GAPS, INPUTS, RELOAD_GAPS, ZOO

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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pk.prune(model, 0.5, granularity=granularity, example_inputs=inputs)
    kept = [str(w.message) for w in caught if "stay unpruned" in str(w.message)]
    # a "stay unpruned" warning exactly where a gap is known (never silent), and every line of
    # it names the op and a module of the model
    assert bool(kept) == (granularity == "channel" and name in CHANNEL_GAPS), kept
    modules = {n or "<root>" for n, _ in model.named_modules()}
    for line in (ln for msg in kept for ln in msg.splitlines()[1:]):
        found = re.search(r"\((\w+) in module ([\w.<>]+)\)$", line)
        assert found is not None and found[2] in modules, line
    small = pk.shrink(model, inputs)
    return model, small, inputs, before, reference


@pytest.mark.parametrize("name", _cases(ZOO))
def test_channel(name):
    masked, small, inputs, before, reference = prune_and_shrink(name, "channel")
    assert _params(small) <= 0.75 * before  # every zoo model, gaps included
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


_LOAD_ALL = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
import prunekit as pk
from tests.structure.zoo import ZOO, INPUTS
from prunekit.structure.graph import call_model, flatten
for name, cls in {jobs!r}:
    model = pk.load({base!r} + "/" + name, model=ZOO[name]())
    assert type(model).__name__ == cls, (name, type(model).__name__)
    with torch.no_grad():
        out = call_model(model.eval(), INPUTS[name]())
    torch.save([t for t in flatten(out) if isinstance(t, torch.Tensor)], {base!r} + f"/{{name}}.pt")
"""


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """Every zoo model, channel- and head-pruned and shrunk, saved, then loaded back in ONE
    fresh process (from its original class plus the shape manifest; no pickle)."""
    import subprocess
    import sys
    from pathlib import Path

    if not hasattr(pk, "save") or not hasattr(pk, "load"):
        pytest.skip("pk.save / pk.load are not on this branch yet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the loading process
    base = tmp_path_factory.mktemp("zoo")
    expected, jobs = {}, []
    for name in (n for n in ZOO if n not in RELOAD_GAPS):
        _, small, inputs, _, _ = prune_and_shrink(name, "channel")
        if name in ATTENTION:
            pk.prune(small, 0.5, granularity="head", example_inputs=inputs)
            small = pk.shrink(small, inputs)
        pk.save(small, base / name)
        expected[name] = [
            t for t in flatten(_outputs(small, inputs)) if isinstance(t, torch.Tensor)
        ]
        jobs.append((name, type(small).__name__))
    root = str(Path(__file__).resolve().parents[2])
    code = _LOAD_ALL.format(root=root, base=str(base), jobs=jobs)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
    torch.set_num_threads(threads)
    return base, expected


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ZOO if n not in RELOAD_GAPS])
def test_save_load_round_trip_in_a_fresh_process(name, reloaded):
    """Identical outputs after save, then load in a fresh process, as the same class."""
    base, expected = reloaded
    got = torch.load(base / f"{name}.pt", weights_only=True)
    assert len(got) == len(expected[name])
    for a, b in zip(expected[name], got, strict=True):
        assert torch.equal(a, b)
