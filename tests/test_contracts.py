"""Contract tests driven by the registries: a new plugin is covered the moment it registers.

* every registry's every entry brings examples (the meta-test);
* every criterion example × every element-wise granularity example, on one tiny Llama with a
  shared calibration set and loss: either refused up front (model untouched) or exact per-layer
  sparsity, valid N:M groups and the same masks on a second run;
* every structured granularity example × every criterion it supports: masks, then a shrink that
  verifies against the masked model and is really smaller;
* every allocation example: the total is exact and no layer loses all its units;
* every schedule example: targets never decrease and end at the final sparsity.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
import warnings

import pytest
import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.allocation import ALLOCATIONS, Allocation
from prunekit.commands import COMMANDS
from prunekit.criteria import CRITERIA, Criterion
from prunekit.formats import FORMATS
from prunekit.granularity import GRANULARITIES, parse_granularity
from prunekit.granularity.nm import NM
from prunekit.masks import MaskState
from prunekit.plugin import from_value
from prunekit.registry import REGISTRIES
from prunekit.runtime.kernels import KERNELS, get_kernel
from prunekit.schedule import SCHEDULES, Schedule
from prunekit.targets import select_targets
from tests.structure.zoo import INPUTS, ZOO
from tests.test_bad_input import assert_untouched, snapshot


def _import_all_plugins() -> None:
    """Import every module of the package, so that every registry is complete."""
    for info in pkgutil.walk_packages(pk.__path__, "prunekit."):
        if not info.name.split(".")[-1].startswith("_"):
            importlib.import_module(info.name)


_import_all_plugins()


def test_every_registry_entry_brings_examples():
    assert len(REGISTRIES) >= 7
    missing = [f"{r.kind}:{n}" for r in REGISTRIES for n in r if not r.examples(n)]
    assert not missing, f"plugins without examples: {missing}"


def _examples(registry, base):
    return [
        pytest.param(from_value(e, registry, base), id=f"{n}-{i}")
        for n in registry
        for i, e in enumerate(registry.examples(n))
    ]


def _granularities(structured: bool):
    return [
        pytest.param(parse_granularity(e), id=f"{n}-{i}")
        for n in GRANULARITIES
        for i, e in enumerate(GRANULARITIES.examples(n))
        if parse_granularity(e).structured == structured
    ]


def llama_batches(n: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (2, 8), generator=g)} for _ in range(n)]


def next_token_loss(output, batch) -> torch.Tensor:
    logits = output.logits[:, :-1]  # [batch, seq-1, vocab]
    return F.cross_entropy(logits.flatten(0, 1), batch["input_ids"][:, 1:].flatten())


def run(model, gran, criterion, sparsity, **extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. APoZ on a functional activation says so
        return pk.prune(
            model, sparsity, granularity=gran, criterion=criterion, data=llama_batches(),
            loss_fn=next_token_loss, **extra,
        )  # fmt: skip


@pytest.mark.parametrize("gran", _granularities(structured=False))
@pytest.mark.parametrize("criterion", _examples(CRITERIA, Criterion))
def test_criterion_contract(criterion, gran):
    model = ZOO["llama"]()
    sparsity = None if gran.fixed_sparsity else 0.5
    if criterion.supports(gran) is not None:
        snap = snapshot(model)
        with pytest.raises(pk.ConfigError):
            run(model, gran, criterion, sparsity)
        assert_untouched(model, snap)
        return
    run(model, gran, criterion, sparsity)
    want = gran.fixed_sparsity or 0.5
    for t in select_targets(model):
        w = t.matrix()
        achieved = 1 - int(torch.count_nonzero(w)) / w.numel()
        unit = gran.unit_size / w.numel()
        if type(criterion).__name__ == "Regression":  # whole input channels: rounded to them
            unit = w.shape[0] / w.numel()
        assert abs(achieved - want) <= unit / 2 + 1e-9, (t.qualname, achieved)
        if isinstance(gran, NM):
            assert gran.holds(w), t.qualname
    if gran.spec != "unstructured":
        return
    again = ZOO["llama"]()
    run(again, gran, criterion, sparsity)
    first, second = MaskState(model).state_dict(), MaskState(again).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)  # deterministic


#: the zoo model a structured granularity is tried on where a Llama has none of its units
STRUCTURED_MODEL = {"expert": "qwen2_moe"}


@pytest.mark.parametrize("gran", _granularities(structured=True))
@pytest.mark.parametrize(
    "criterion", [n for n in CRITERIA if not issubclass(CRITERIA.get(n), pk.criteria.Solver)]
)
def test_structured_granularity_contract(gran, criterion):
    name = STRUCTURED_MODEL.get(gran.spec, "llama")
    model, x = ZOO[name](), INPUTS[name]()
    if CRITERIA.get(criterion)().supports(gran) is not None:  # refused up front, untouched
        snap = snapshot(model)
        with pytest.raises(pk.ConfigError):
            run(model, gran, criterion, 0.5, example_inputs=x)
        assert_untouched(model, snap)
        return
    before = sum(p.numel() for p in model.parameters())
    pruner = run(model, gran, criterion, 0.5, example_inputs=x)
    assert pruner.groups(), f"{gran.spec} found nothing to prune in {name}"
    small = pk.shrink(model, x)  # raises VerificationError unless it matches the masked model
    assert sum(p.numel() for p in small.parameters()) < before


@pytest.mark.parametrize("allocation", _examples(ALLOCATIONS, Allocation))
@pytest.mark.parametrize("sparsity", [0.3, 0.85])
def test_allocation_contract(allocation, sparsity):
    g = torch.Generator().manual_seed(0)
    units = {
        f"layers.{i}.fc{j}.weight": torch.rand(8 + 3 * j, 16, generator=g) ** (1 + 3 * i)
        for i in range(3)
        for j in range(2)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cap may bind at 0.9
        budget = allocation.layer_sparsities(units, sparsity)
    assert budget.keys() == units.keys()
    counts = {n: round(budget[n] * u.numel()) for n, u in units.items()}
    if allocation.needs_scores:  # spread over layers: the overall count is exact
        assert sum(counts.values()) == round(sparsity * sum(u.numel() for u in units.values()))
    else:  # the same sparsity everywhere: exact in every layer
        assert all(counts[n] == round(sparsity * u.numel()) for n, u in units.items())
    assert all(0 <= counts[n] < u.numel() for n, u in units.items())


def test_global_cap_warns_and_keeps_every_layer_alive():
    units = {"big.weight": torch.full((100,), 10.0), "small.weight": torch.ones(10)}
    with pytest.warns(UserWarning, match="small.weight"):
        budget = pk.Global().layer_sparsities(units, 0.5)
    assert round(budget["small.weight"] * 10) == 9  # 0.99 of 10 units, floored: one stays
    assert round(budget["big.weight"] * 100) == 46  # the rest of the 55 comes from here


@pytest.mark.parametrize("schedule", _examples(SCHEDULES, Schedule))
def test_schedule_contract(schedule):
    targets = [s for s in (schedule.sparsity_at(t, 0.8) for t in range(200)) if s is not None]
    assert targets, "the schedule never prunes"
    assert all(b >= a for a, b in itertools.pairwise(targets))
    assert targets[-1] == pytest.approx(0.8)


def pattern_tensor(spec: str, shape: tuple[int, int] = (16, 64)) -> torch.Tensor:
    """A random tensor with the sparsity pattern ``spec`` ("unstructured:0.9", "2:4")."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g)
    if spec.startswith("unstructured:"):
        keep = torch.rand(shape, generator=g) >= float(spec.split(":")[1])
    else:
        nm = NM.from_spec(spec)
        keep = nm.select(w.abs(), nm.fixed_sparsity)  # N of every M
    return w.masked_fill(~keep, 0)  # +0.0, as the checkpoint writer stores pruned weights


@pytest.mark.parametrize(
    ("name", "spec"), [(n, e) for n in FORMATS for e in FORMATS.examples(n)], ids=str
)
def test_format_contract(name, spec):
    fmt = FORMATS.get(name)()
    t = pattern_tensor(spec).half()
    enc = fmt.encode(t)
    assert torch.equal(fmt.decode(enc.parts, enc.meta, tuple(t.shape), t.dtype), t)


@pytest.mark.parametrize(
    ("name", "spec"), [(n, e) for n in KERNELS for e in KERNELS.examples(n)], ids=str
)
def test_kernel_contract(name, spec):
    """Each kernel on its example patterns; inexact kernels against their rounded weight (bf16,
    or int8 steps of each row's largest magnitude / 127)."""
    w = pattern_tensor(spec, (48, 96))
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(1))
    kernel = get_kernel(name)
    if not kernel.available():
        pytest.skip(f"{name} is not available on this machine")
    packed = kernel.pack(w)
    stored = w if kernel.exact else w.bfloat16().float()
    if getattr(kernel, "value_dtype", None) == torch.int8:
        step = (w.abs().amax(1, keepdim=True) / 127).clamp_min(1e-30)
        stored = torch.round(w / step).clamp(-127, 127) * step
    assert torch.equal(kernel.unpack(packed, tuple(w.shape)), stored)
    out = kernel.linear(x, packed, None, tuple(w.shape))
    torch.testing.assert_close(out, x @ stored.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "argv"), [(n, e) for n in COMMANDS for e in COMMANDS.examples(n)], ids=str
)
def test_command_contract(name, argv, capsys):
    from prunekit.cli import main

    try:
        code = main([name, *argv])
    except SystemExit as e:  # --help exits
        code = e.code
    assert code == 0
    assert capsys.readouterr().out.strip()
