"""Contract tests run over every registered storage format, plus size goals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import CheckpointError
from prunekit.formats import FORMATS, entropy_limit_bits
from prunekit.formats.auto import encode

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64]


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns, so that comparisons see -0.0 and NaN payloads."""
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(view)


def sparse(shape, density: float, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen) * 50
    t = t.to(dtype)
    return torch.where(torch.rand(shape, generator=gen) < density, t, torch.zeros((), dtype=dtype))


def nm_pattern(rows: int, cols: int, n: int, m: int, dtype: torch.dtype) -> torch.Tensor:
    t = torch.randn(rows, cols).to(dtype)
    order = torch.rand(rows, cols // m, m).argsort(-1)  # random N of every M
    keep = torch.zeros(rows, cols // m, m, dtype=torch.bool).scatter_(-1, order[..., :n], True)
    return torch.where(keep.reshape(rows, cols), t, torch.zeros((), dtype=dtype))


def roundtrip(name: str, t: torch.Tensor) -> torch.Tensor | None:
    fmt = FORMATS.get(name)()
    enc = fmt.encode(t)
    if enc is None:
        return None
    assert set(enc.parts) == set(fmt.part_names)
    assert json.loads(json.dumps(enc.meta)) == enc.meta
    return fmt.decode(enc.parts, enc.meta, tuple(t.shape), t.dtype)


@st.composite
def tensors(draw):
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    density = draw(st.sampled_from([0.0, 0.02, 0.1, 0.5, 0.9, 1.0]))
    t = sparse(shape, density, dtype, seed=draw(st.integers(0, 2**16)))
    if dtype.is_floating_point and t.numel() and draw(st.booleans()):
        t.view(-1)[0] = draw(st.sampled_from([-0.0, math.nan, math.inf]))
    return t


@pytest.mark.parametrize("name", FORMATS.names())
@settings(max_examples=60, deadline=None)
@given(t=tensors())
def test_roundtrip_is_bit_exact(name, t):
    out = roundtrip(name, t)
    if out is not None:
        assert out.dtype == t.dtype and out.shape == t.shape
        assert torch.equal(bits(out), bits(t))


@pytest.mark.parametrize("name", FORMATS.names())
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_roundtrip_on_nm_patterns(name, dtype):
    t = nm_pattern(8, 32, 2, 4, dtype)
    out = roundtrip(name, t)
    assert out is not None, f"{name} refuses a 2:4 tensor"
    assert torch.equal(bits(out), bits(t))


@pytest.mark.parametrize("name", FORMATS.names())
def test_decode_rejects_a_grown_part(name):
    """Appending one element to any part is detected: lengths are checked against each other."""
    t = sparse((6, 16), 0.3, torch.float16, seed=3)
    t[:, 8:] = nm_pattern(6, 8, 1, 4, torch.float16)  # let nm hold it too
    t[:, :8] = nm_pattern(6, 8, 1, 4, torch.float16)
    fmt = FORMATS.get(name)()
    enc = fmt.encode(t)
    for pname, p in enc.parts.items():
        for fill in (0, 255, 1):
            grown = torch.cat([p.reshape(-1), torch.full((1,), fill).to(p.dtype)])
            parts = {**enc.parts, pname: grown if p.dim() == 1 else grown.reshape(1, -1)}
            with pytest.raises(CheckpointError):
                fmt.decode(parts, enc.meta, tuple(t.shape), t.dtype)


@pytest.mark.parametrize("name", FORMATS.names())
def test_decode_rejects_wrong_dtype_and_missing_parts(name):
    t = nm_pattern(4, 16, 2, 4, torch.float32)
    fmt = FORMATS.get(name)()
    enc = fmt.encode(t)
    for pname in enc.parts:
        parts = {k: v for k, v in enc.parts.items() if k != pname}
        with pytest.raises(CheckpointError):
            fmt.decode(parts, enc.meta, tuple(t.shape), t.dtype)
    with pytest.raises(CheckpointError):
        fmt.decode(enc.parts, enc.meta, tuple(t.shape), torch.float16)
    with pytest.raises(CheckpointError):
        fmt.decode(enc.parts, {**enc.meta, "surprise": 1}, tuple(t.shape), t.dtype)


@settings(max_examples=40, deadline=None)
@given(t=tensors())
def test_auto_is_never_larger_than_dense(t):
    _, enc = encode(t)
    assert enc.nbytes <= t.numel() * t.element_size()


def test_unknown_format_name_lists_the_choices():
    from prunekit.errors import UnknownChoiceError

    with pytest.raises(UnknownChoiceError, match="rice"):
        encode(torch.zeros(3), "zip")


@pytest.mark.parametrize("sparsity", [0.9, 0.95])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_unstructured_size_is_near_the_entropy_limit(sparsity, dtype):
    t = sparse((256, 512), 1 - sparsity, dtype, seed=1)
    _, enc = encode(t)
    nnz = int(torch.count_nonzero(t))
    limit = entropy_limit_bits(t.numel(), nnz, 8 * t.element_size())
    assert 8 * enc.nbytes <= 1.15 * limit


def test_two_four_fp16_fits_in_9_bits_per_weight():
    t = nm_pattern(64, 256, 2, 4, torch.float16)
    _, enc = encode(t)
    assert 8 * enc.nbytes / t.numel() <= 9.5
    _, nm = encode(t, "nm")
    assert 8 * nm.nbytes / t.numel() == 8.75  # 2 values of 16 bits + a 3-bit pattern rank per 4


def test_csr_picks_int16_for_very_sparse_rows():
    t = torch.zeros(4, 30000)
    t[:, ::3000] = 1.0  # gaps of ~3000: delta8 needs 12 escape bytes, int16 two
    enc = FORMATS.get("csr")().encode(t)
    assert enc.meta["index"] == "int16"
    out = FORMATS.get("csr")().decode(enc.parts, enc.meta, (4, 30000), t.dtype)
    assert torch.equal(out, t)


def test_rice_parameter_grows_with_sparsity():
    from prunekit.formats.rice import best_k

    rng = np.random.default_rng(0)
    ks = [best_k(rng.geometric(p, 1000) - 1) for p in (0.5, 0.1, 0.01)]
    assert ks == sorted(ks) and ks[0] < ks[-1]
