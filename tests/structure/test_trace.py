"""The shape-only trace: the same groups as a trace that computes every op, and a model that
reads or stores activation values is traced exactly, never left with zeros."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.structure.graph import trace
from prunekit.structure.groups import analyse

from .zoo import INPUTS, ZOO


def _groups(graph) -> list:
    return [
        (g.name, [(s.name, s.dim) for s in g.slots], [i.tolist() for i in g.index])
        for g in analyse(graph).groups
    ]


@pytest.mark.parametrize("name", ["cnn", "mlp", "mha", "llama", "bert", "t5", "mixtral", "bloom"])
def test_shape_only_trace_finds_the_groups_of_an_exact_trace(name):
    model, x = ZOO[name](), INPUTS[name]()
    before = copy.deepcopy(model.state_dict())
    fast, exact = trace(model, x), trace(model, x, exact=True)
    assert exact.exact
    assert _groups(fast) == _groups(exact)
    assert fast.exact == (name == "mixtral")  # routing: top-k over the router's logits
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class _Branches(nn.Module):
    """Takes branch ``a`` when the projection's output sums above zero (it does on real
    values, never on zeros)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.a, self.b = nn.Linear(8, 3), nn.Linear(8, 3)
        with torch.no_grad():
            self.proj.weight.fill_(0.5)
            self.proj.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return self.a(h) if h.sum() > 0 else self.b(h)


def test_a_branch_on_activation_values_is_traced_exactly():
    model, x = _Branches().eval(), torch.ones(2, 4)
    graph = trace(model, x)
    assert graph.exact
    modules = {c.module for c in graph.calls}
    assert "a" in modules and "b" not in modules
    assert torch.equal(graph.outputs, model(x))


class _Cache(nn.Module):
    """Computes a table on its first call and keeps it (a rotary-style cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.table_proj = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)
        self.table = None
        self.register_buffer("seen", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.table is None:
            self.table = self.table_proj(torch.eye(4))
        self.seen.copy_(x.mean(0))  # a known value: written by any trace
        return self.out(x @ self.table)


def test_a_cache_filled_by_the_trace_holds_real_values():
    torch.manual_seed(0)
    model, x = _Cache().eval(), torch.randn(3, 4)
    graph = trace(model, x)
    assert graph.exact
    expected = model.table_proj(torch.eye(4))
    assert model.table is not None and torch.equal(model.table, expected)
    assert torch.equal(model.seen, x.mean(0))


class _Stats(nn.Module):
    """Writes an activation statistic into a buffer in place during the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)
        self.register_buffer("last", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x).relu()
        self.last.copy_(h.mean(0))
        return self.fc2(h)


def test_an_activation_written_into_a_buffer_is_the_real_one():
    torch.manual_seed(0)
    model, x = _Stats().eval(), torch.randn(3, 4)
    graph = trace(model, x)
    assert graph.exact
    with torch.no_grad():
        assert torch.allclose(model.last, model.fc1(x).relu().mean(0))


def test_like_input_covers_calls_whose_output_is_shaped_like_their_input_only():
    from prunekit.structure.shapes import like_input

    x = torch.randn(2, 3)
    assert like_input("add", (x, x.clone()), {}).shape == (2, 3)
    assert like_input("add", (x, torch.randn(3)), {}) is None  # broadcasting: computed
    assert like_input("mul", (x, 2.0), {}) is None  # a scalar: computed
    assert like_input("add", (x, x.double()), {}) is None  # type promotion: computed
    assert like_input("relu", (x,), {"inplace": True}) is None
    assert like_input("softmax", (x,), {}) is None  # not one it covers
    last = torch.randn(1, 4, 3, 3).to(memory_format=torch.channels_last)
    out = like_input("batch_norm", (last, torch.zeros(4), torch.ones(4)), {})
    assert out.shape == last.shape and out.stride() == last.stride()


def test_in_place_names_the_calls_that_write_their_first_argument():
    from prunekit.structure.shapes import in_place

    x = torch.randn(2, 3)
    assert in_place("relu_", (x,), {}) and in_place("__iadd__", (x, x), {})
    assert in_place("relu", (x,), {"inplace": True}) and in_place("leaky_relu", (x, 0.1, True), {})
    assert not in_place("relu", (x,), {}) and not in_place("relu", (x,), {"inplace": False})
    assert not in_place("batch_norm", (x, None, None, None, None, True), {})
