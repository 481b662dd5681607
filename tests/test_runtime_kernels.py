"""Contract tests over every registered sparse kernel, plus the compiled-library fallback."""

from __future__ import annotations

import pytest
import torch

from prunekit.runtime import KERNELS, get_kernel
from prunekit.runtime.kernels import _build, prunekit_csr


def sparse_weight(out: int, inp: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    w[torch.rand(out, inp, generator=g) < sparsity] = 0
    w[1] = 0  # an empty row
    return w


def kernel_or_skip(name: str):
    kernel = get_kernel(name)
    if not kernel.available():
        pytest.skip(f"{name} is not available here")
    return kernel


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("name", KERNELS.names())
@pytest.mark.parametrize("rows", [1, 8, 64, 3, 37])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_matches_dense(name, rows, sparsity, bias):
    kernel = kernel_or_skip(name)
    w = sparse_weight(70, 131, sparsity)
    b = torch.randn(70) if bias else None
    x = torch.randn(rows, 131)
    y = kernel.linear(x, kernel.pack(w), b, tuple(w.shape))
    assert y.shape == (rows, 70)
    assert rel_err(y, torch.nn.functional.linear(x, w, b)) <= 1e-5


@pytest.mark.parametrize("name", KERNELS.names())
@pytest.mark.parametrize("rows", [1, 8, 37])
def test_kernel_matches_dense_on_several_threads(name, rows):
    """Big enough (work x rows >= 64K) for the compiled kernels to split rows between threads."""
    kernel = kernel_or_skip(name)
    w = sparse_weight(300, 900, 0.5)
    b = torch.randn(300)
    x = torch.randn(rows, 900)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        y = kernel.linear(x, kernel.pack(w), b, tuple(w.shape))
    finally:
        torch.set_num_threads(threads)
    assert rel_err(y, torch.nn.functional.linear(x, w, b)) <= 1e-5


@pytest.mark.parametrize("name", KERNELS.names())
def test_pack_is_compressed_fresh_storage_and_unpacks_exactly(name):
    kernel = kernel_or_skip(name)
    w = sparse_weight(64, 96, 0.9)
    packed = kernel.pack(w)
    ptr = w.untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() != ptr for t in packed.values())
    assert sum(t.numel() * t.element_size() for t in packed.values()) < 0.3 * w.numel() * 4
    assert torch.equal(kernel.unpack(packed, tuple(w.shape)), w)


@pytest.mark.parametrize("name", KERNELS.names())
def test_all_zero_weight(name):
    kernel = kernel_or_skip(name)
    w = torch.zeros(5, 9)
    y = kernel.linear(torch.randn(4, 9), kernel.pack(w), torch.ones(5), (5, 9))
    assert torch.equal(y, torch.ones(4, 5))


def test_compiled_kernel_wide_layer_uses_int32_columns():
    kernel = kernel_or_skip("prunekit_csr")
    w = sparse_weight(3, 70_000, 0.99)
    packed = kernel.pack(w)
    assert packed["col"].dtype == torch.int32
    x = torch.randn(2, 70_000)
    assert rel_err(kernel.linear(x, packed, None, (3, 70_000)), x @ w.t()) <= 1e-5


def test_compiled_kernel_narrow_columns():
    kernel = kernel_or_skip("prunekit_csr")
    packed = kernel.pack(sparse_weight(4, 65_536, 0.99))
    assert packed["col"].dtype == torch.uint16


def test_sell_declines_wide_layers_and_keeps_row_order():
    kernel = get_kernel("prunekit_sell")
    assert not kernel.accepts((4, 70_000)) and kernel.accepts((4, 65_536))
    w = torch.zeros(33, 20)
    w[torch.arange(33), torch.arange(33) % 20] = torch.arange(1.0, 34.0)  # one per row
    w[5, :] = 1.0  # the longest row goes first in the permutation
    packed = kernel.pack(w)
    assert int(packed["perm"][0]) == 5
    assert torch.equal(kernel.unpack(packed, (33, 20)), w)


def test_no_compile_env_falls_back(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_NO_COMPILE", "1")
    assert _build.load_library.__wrapped__(prunekit_csr.SOURCE) is None


def test_broken_compiler_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.delenv("PRUNEKIT_NO_COMPILE", raising=False)
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    monkeypatch.setenv("PRUNEKIT_KERNEL_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match="could not build"):
        assert _build.load_library.__wrapped__(prunekit_csr.SOURCE) is None
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


def test_unavailable_kernel_is_not_a_candidate(monkeypatch):
    from prunekit.runtime import available_kernels

    monkeypatch.setattr(prunekit_csr, "_function", lambda name: None)
    names = [k.name for k in available_kernels(torch.float32, torch.device("cpu"))]
    assert "prunekit_csr" not in names and "torch_csr" in names
