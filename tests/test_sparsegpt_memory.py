"""SparseGPT's memory while pruning stays within two Hessians plus the block.

The peak is the largest sum of live tensor bytes that torch's CPU allocator reports to the
profiler (every allocation and free, in order; exact and deterministic, unlike the resident set,
which also holds what the C heap kept: ``benchmarks/sparsegpt_memory.py`` measures that one). The
bound is computed here from the shapes: two float32 ``cols²`` Hessians of the widest layer, a
float32 copy of the block's pruned weights and its calibration activations; the masks the call
leaves attached are the result, not working memory.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import prunekit as pk
from prunekit.masks import mask_names

MiB = 2**20


def peak_tensor_bytes(fn) -> tuple[int, int]:
    """(peak, final) sum of live torch CPU allocations while ``fn()`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak, live


def mask_bytes(model: nn.Module) -> int:
    return sum(m.numel() * m.element_size() for mod in model.modules() for _, m in mask_names(mod))


class Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class Stack(nn.Module):
    def __init__(self, width: int, hidden: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, hidden) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


@pytest.mark.parametrize("granularity", ["unstructured", "2:4"])
def test_a_lone_linear_peaks_at_two_hessians_plus_its_weights(granularity):
    torch.manual_seed(0)
    model = nn.Linear(1024, 256)
    data = [torch.randn(64, 1024) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no block list: whole-model hooks
        peak, final = peak_tensor_bytes(
            lambda: pk.prune(model, 0.5, granularity=granularity, criterion="sparsegpt", data=data)
        )
    assert final == mask_bytes(model) == 1024 * 256  # nothing else outlives the call
    hessian = 1024 * 1024 * 4
    weights = 1024 * 256 * 4
    output = 64 * 256 * 4  # one batch's output at a time
    assert peak - final <= 2 * hessian + weights + output
    # XᵀX is freed before the sweep's copy of the weight is made: the factor's build (XᵀX and
    # its one working copy) is the peak, the sweep (factor, weight copy, mask) stays below it
    assert peak - final <= 2 * hessian + output + 64 * 1024


def test_a_block_model_peaks_at_two_hessians_plus_one_block():
    torch.manual_seed(0)
    width, hidden, depth = 256, 1024, 3
    model = Stack(width, hidden, depth)
    data = [torch.randn(2, 32, width) for _ in range(2)]
    peak, final = peak_tensor_bytes(lambda: pk.prune(model, 0.5, criterion="sparsegpt", data=data))
    assert final == mask_bytes(model) == depth * 2 * width * hidden
    hessian = hidden * hidden * 4  # down's XᵀX, the widest
    block = 2 * width * hidden * 4  # the block's weights, float32
    tokens = sum(x.shape[0] * x.shape[1] for x in data)
    activations = 2 * tokens * width * 4 + tokens * hidden * 4  # inputs, outputs; one hidden
    assert peak - final <= 2 * hessian + block + activations
