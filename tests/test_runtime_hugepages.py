"""Packed kernel arrays in huge pages: same values, exact storages, same kernel results."""

from __future__ import annotations

import copy
import mmap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load, save

from prunekit.runtime import get_kernel
from prunekit.runtime.kernels.hugepages import HUGE_PAGE, huge_page_copy
from prunekit.runtime.memory import weight_bytes

pytestmark = pytest.mark.skipif(
    not hasattr(mmap, "MADV_HUGEPAGE"), reason="no MADV_HUGEPAGE on this platform"
)


def test_copy_is_aligned_exact_and_independent():
    t = torch.randn(3, HUGE_PAGE // 4 + 7)  # 1.5 huge pages of fp32
    h = huge_page_copy(t)
    assert h.data_ptr() % HUGE_PAGE == 0
    assert h.data_ptr() != t.data_ptr() and torch.equal(h, t) and h.shape == t.shape
    assert h.untyped_storage().nbytes() == t.numel() * 4  # no slack is charged to the array
    h += 1  # writable, and not the source
    assert torch.equal(h, t + 1)
    assert torch.equal(load(save({"h": h}))["h"], h)  # safetensors writes exactly its bytes
    assert torch.equal(copy.deepcopy(h), h)


def test_small_arrays_stay_where_they_are():
    t = torch.randn(HUGE_PAGE // 4 - 1)
    assert huge_page_copy(t) is t


@pytest.mark.parametrize("name", ["prunekit_bitmask", "prunekit_bitmask_bf16", "prunekit_nm"])
def test_large_packed_layer_lives_in_huge_pages_and_matches_dense(name):
    kernel = get_kernel(name)
    if not kernel.available():
        pytest.skip(f"{name} is not compiled here")
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1024, 2048, generator=gen)  # values of 2-4 MiB
    groups = w.view(1024, 512, 4)  # [out, groups, 4]: 2:4, which every kernel here runs
    groups.scatter_(-1, torch.rand(groups.shape, generator=gen).argsort(-1)[..., 2:], 0.0)
    packed = kernel.pack(w)
    assert packed["values"].data_ptr() % HUGE_PAGE == 0
    layer = torch.nn.Module()
    for k, t in packed.items():
        layer.register_buffer(k, t)
    assert weight_bytes(layer) == sum(t.numel() * t.element_size() for t in packed.values())
    ref = kernel.unpack(packed, tuple(w.shape))  # the weight as stored (bf16-rounded for bf16)
    x = torch.randn(3, 2048, generator=gen)
    for rows in (x[:1], x):
        y = kernel.linear(rows, packed, None, tuple(w.shape))
        assert torch.allclose(y, F.linear(rows, ref), rtol=1e-5, atol=1e-4)
