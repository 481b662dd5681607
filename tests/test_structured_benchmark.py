"""benchmarks/structured.py compares latency to MACs: its MAC count must hold attention's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

_spec = importlib.util.spec_from_file_location(
    "structured_bench", Path(__file__).parents[1] / "benchmarks" / "structured.py"
)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclasses look their module up
_spec.loader.exec_module(bench)


class Attend(nn.Module):
    def __init__(self, kv_heads: int) -> None:
        super().__init__()
        self.kv_heads = kv_heads

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        kv = q.new_ones(q.shape[0], self.kv_heads, 6, q.shape[3])  # [batch, kv heads, 6, width]
        return F.scaled_dot_product_attention(q, kv, kv, enable_gqa=self.kv_heads < q.shape[1])


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_macs_count_the_attention_matmuls_of_cpu_sdpa(kv_heads):
    q = torch.randn(3, 4, 5, 8)  # [batch, heads, 5 tokens, width 8]
    # q kᵀ: 5 x 6 scores of width 8 per head; scores @ v: 5 x 8 outputs over 6 keys per head
    assert bench.macs(Attend(kv_heads), q) == 3 * 4 * (5 * 6 * 8 + 5 * 8 * 6)


def test_macs_of_a_linear_are_its_multiply_accumulates():
    assert bench.macs(nn.Linear(7, 3), torch.randn(2, 7)) == 2 * 7 * 3
