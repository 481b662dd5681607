"""Contract tests over every registered sparse kernel, on every code path, against dense results.

Each kernel's output is compared with ``torch.nn.functional.linear`` on the weight it stores
(for the bf16 kernels: the weight rounded to bfloat16 by torch, an independent rounding), over
odd shapes, empty / all-zero / fully dense rows, batch 1 and > 1 (tails of every size), one and
two threads, and each instruction-set build (AVX-512, AVX2, portable) of the compiled kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunekit.errors import ConfigError
from prunekit.runtime import KERNELS, get_kernel
from prunekit.runtime.kernels import _build, bitmask, nm, prunekit_csr

NM_KERNELS = {"prunekit_nm", "prunekit_nm_bf16"}
COMPILED = {
    "prunekit_bitmask",
    "prunekit_bitmask_bf16",
    "prunekit_bitmask_int8",
    "prunekit_nm",
    "prunekit_nm_bf16",
}
ISAS = [isa for isa in _build.ISA_FLAGS if _build.isa_runs_here(isa)]


def unstructured(
    out: int, inp: int, sparsity: float, seed: int = 0, dense_row: bool = True
) -> torch.Tensor:
    """Random weight with about ``sparsity`` zeros, row 1 empty and (if out > 3) row 2 dense."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    w[torch.rand(out, inp, generator=g) < sparsity] = 0
    w[1 % out] = 0
    if out > 3 and dense_row:
        w[2] = torch.randn(inp, generator=g)
    return w


def n_of_m(out: int, inp: int, n: int, m: int, seed: int = 0) -> torch.Tensor:
    """Exactly ``n`` non-zeros per group of ``m`` inputs, except row 1 (empty) and row 3 (< n)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    groups = w.view(out, inp // m, m)  # [out, G, M]
    drop = torch.rand(groups.shape, generator=g).argsort(-1)[..., n:]
    groups.scatter_(-1, drop, 0.0)
    w[1 % out] = 0
    if out > 3:
        w[3, ::2] = 0
    return w


def weight_for(
    name: str, out: int, inp: int, sparsity: float, seed: int = 0, dense_row: bool = True
) -> torch.Tensor:
    if name in NM_KERNELS:
        return n_of_m(out, inp, 2, 4, seed)
    return unstructured(out, inp, sparsity, seed, dense_row)


def int8_rows(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded to 255 levels per row (step: the row's largest magnitude / 127)."""
    step = w.abs().amax(1, keepdim=True) / 127
    step[step == 0] = 1
    return torch.round(w / step).clamp(-127, 127) * step


def stored(name: str, w: torch.Tensor) -> torch.Tensor:
    """The weight a kernel really multiplies by: rounded to bf16 / int8 for the inexact kernels."""
    kernel = get_kernel(name)
    if kernel.exact:
        return w
    if getattr(kernel, "value_dtype", None) == torch.int8:
        return int8_rows(w)
    return w.bfloat16().float()


def kernel_or_skip(name: str):
    kernel = get_kernel(name)
    if not kernel.available():
        pytest.skip(f"{name} is not available here")
    return kernel


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Run the compiled kernels as built for each instruction-set level."""
    monkeypatch.setenv("PRUNEKIT_KERNEL_ISA", request.param)
    return request.param


@pytest.mark.parametrize("name", KERNELS.names())
@pytest.mark.parametrize("rows", [1, 8, 3, 37])
@pytest.mark.parametrize("sparsity", [0.5, 0.98])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_matches_dense(name, rows, sparsity, bias):
    kernel = kernel_or_skip(name)
    w = weight_for(name, 70, 132, sparsity)
    b = torch.randn(70) if bias else None
    x = torch.randn(rows, 132)
    y = kernel.linear(x, kernel.pack(w), b, tuple(w.shape))
    assert y.shape == (rows, 70)
    assert rel_err(y, F.linear(x, stored(name, w), b)) <= 1e-5


@pytest.mark.parametrize("name", sorted(COMPILED))
@pytest.mark.parametrize("rows", [1, 5, 8, 11])
@pytest.mark.parametrize("shape", [(70, 132), (9, 8), (1, 200)])
def test_compiled_kernels_on_every_instruction_set(name, rows, shape, isa):
    kernel = kernel_or_skip(name)
    w = weight_for(name, *shape, 0.6, seed=rows)
    b = torch.randn(shape[0])
    x = torch.randn(rows, shape[1])
    y = kernel.linear(x, kernel.pack(w), b, shape)
    assert rel_err(y, F.linear(x, stored(name, w), b)) <= 1e-5


def test_instruction_set_paths_are_what_they_say(monkeypatch):
    """The portable build really is the portable path; avx2 is not the AVX-512 one."""
    kernel = kernel_or_skip("prunekit_bitmask")
    monkeypatch.setenv("PRUNEKIT_KERNEL_ISA", "portable")
    assert kernel.variant() == "portable" and get_kernel("prunekit_nm").variant() == "portable"
    monkeypatch.setenv("PRUNEKIT_KERNEL_ISA", "avx2")
    assert kernel.variant() in ("avx2", "portable")  # avx2 where the compiler targets x86
    assert kernel.label().startswith("prunekit_bitmask[")
    monkeypatch.setenv("PRUNEKIT_KERNEL_ISA", "avx9000")
    with pytest.raises(ConfigError, match="avx2"):
        kernel.available()


@pytest.mark.parametrize("name", KERNELS.names())
@pytest.mark.parametrize("rows", [1, 8, 37])
def test_kernel_matches_dense_on_several_threads(name, rows):
    """Big enough (work x rows >= 64K) for the compiled kernels to split rows between threads."""
    kernel = kernel_or_skip(name)
    w = weight_for(name, 300, 900, 0.5)
    b = torch.randn(300)
    x = torch.randn(rows, 900)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(kernel.linear(x, kernel.pack(w), b, tuple(w.shape)))
    finally:
        torch.set_num_threads(threads)
    for y in results:
        assert rel_err(y, F.linear(x, stored(name, w), b)) <= 1e-5


@pytest.mark.parametrize("name", KERNELS.names())
def test_pack_is_compressed_fresh_storage_and_unpacks_exactly(name):
    kernel = kernel_or_skip(name)
    w = weight_for(name, 64, 96, 0.9, dense_row=False)
    packed = kernel.pack(w)
    ptr = w.untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() != ptr for t in packed.values())
    limit = 0.6 if name in NM_KERNELS else 0.3  # 2:4 keeps half the values
    assert sum(t.numel() * t.element_size() for t in packed.values()) < limit * w.numel() * 4
    assert torch.equal(kernel.unpack(packed, tuple(w.shape)), stored(name, w))


@pytest.mark.parametrize("name", KERNELS.names())
def test_all_zero_weight(name):
    kernel = kernel_or_skip(name)
    w = torch.zeros(5, 8)
    y = kernel.linear(torch.randn(4, 8), kernel.pack(w), torch.ones(5), (5, 8))
    assert torch.equal(y, torch.ones(4, 5))


@pytest.mark.parametrize("name", KERNELS.names())
def test_empty_batch(name):
    kernel = kernel_or_skip(name)
    w = weight_for(name, 6, 16, 0.5)
    y = kernel.linear(torch.randn(0, 16), kernel.pack(w), None, (6, 16))
    assert y.shape == (0, 6)


@pytest.mark.parametrize(
    "name", ["prunekit_bitmask", "prunekit_bitmask_bf16", "prunekit_bitmask_int8"]
)
def test_bitmask_fully_dense_and_wide_weights(name):
    kernel = kernel_or_skip(name)
    for shape in [(7, 64), (3, 1000), (2, 70_000)]:
        w = stored(name, torch.randn(*shape))  # no zero at all
        x = torch.randn(3, shape[1])
        packed = kernel.pack(w)
        assert packed["mask"].shape == (shape[0], -(-shape[1] // 64))
        assert rel_err(kernel.linear(x, packed, None, shape), x @ w.t()) <= 1e-5


def test_bitmask_layout_is_one_bit_per_column_and_packed_row_values():
    w = torch.zeros(2, 70)
    w[0, [0, 3, 64, 69]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w[1, 5] = 5.0
    mask, rowptr, values = bitmask.bitmask_parts(w)
    assert mask.tolist() == [[1 | 8, 1 | 32], [32, 0]]
    assert rowptr.tolist() == [0, 4, 5] and values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_bf16_values_cost_half_and_round_to_nearest():
    w = unstructured(64, 128, 0.5)
    f32 = get_kernel("prunekit_bitmask").pack(w)["values"]
    b16 = get_kernel("prunekit_bitmask_bf16").pack(w)["values"]
    assert b16.dtype == torch.bfloat16 and b16.numel() == f32.numel()
    assert torch.equal(b16.float(), f32.bfloat16().float())
    assert not get_kernel("prunekit_bitmask_bf16").exact and get_kernel("prunekit_bitmask").exact


def test_int8_values_cost_a_quarter_and_stay_within_half_a_step():
    w = unstructured(64, 128, 0.5)
    w[5, 7] = -3.0  # the row's largest magnitude sets its step
    kernel = get_kernel("prunekit_bitmask_int8")
    packed = kernel.pack(w)
    f32 = get_kernel("prunekit_bitmask").pack(w)["values"]
    assert packed["values"].dtype == torch.int8 and packed["values"].numel() == f32.numel()
    assert packed["scale"].shape == (64,) and packed["scale"][5] == 3.0 / 127
    assert packed["scale"][1] == 1.0  # the empty row
    back = kernel.unpack(packed, (64, 128))
    assert ((back - w).abs() <= packed["scale"].unsqueeze(1) / 2 + 1e-7).all()
    assert ((back != 0) <= (w != 0)).all()  # no weight appears where the mask has none
    assert not kernel.exact


@pytest.mark.parametrize(("n", "m"), nm.PATTERNS)
@pytest.mark.parametrize("rows", [1, 4, 9])
def test_nm_kernel_runs_every_pattern(n, m, rows):
    kernel = kernel_or_skip("prunekit_nm")
    w = n_of_m(24, 8 * m * 3, n, m, seed=n + m)
    packed = kernel.pack(w)
    assert tuple(packed["pattern"].tolist()) == (n, m)
    x = torch.randn(rows, w.shape[1])
    assert rel_err(kernel.linear(x, packed, None, tuple(w.shape)), x @ w.t()) <= 1e-5


@pytest.mark.parametrize(("n", "m"), nm.PATTERNS)
def test_nm_kernel_packs_straight_from_the_nm_checkpoint_format(n, m):
    """The checkpoint format's parts become the kernel's layout with no dense weight between."""
    from prunekit.formats import FORMATS

    w = n_of_m(12, 64, n, m, seed=n + m)
    fmt = FORMATS.get("nm")()
    enc = fmt.encode(w)
    assert torch.equal(fmt.decode(enc.parts, enc.meta, (12, 64), torch.float32), w)
    packed = nm.packed_from_nm_format(enc.parts, enc.meta, (12, 64))
    kernel = kernel_or_skip("prunekit_nm")
    assert torch.equal(kernel.unpack(packed, (12, 64)), w)
    if tuple(enc.meta.values()) == nm.nm_pattern(w):  # the same N:M chosen: the same layout
        assert all(torch.equal(packed[k], t) for k, t in kernel.pack(w).items())
    x = torch.randn(5, 64)
    assert rel_err(kernel.linear(x, packed, None, (12, 64)), x @ w.t()) <= 1e-5


def test_nm_checkpoint_parts_of_an_unsupported_pattern_are_refused():
    from prunekit.formats import FORMATS

    w = n_of_m(4, 32, 3, 16)
    enc = FORMATS.get("nm")().encode(w)
    with pytest.raises(ConfigError, match="2:4"):
        nm.packed_from_nm_format(enc.parts, enc.meta, (4, 32))


def test_nm_pattern_detection_and_layout():
    assert nm.nm_pattern(n_of_m(4, 16, 2, 4)) == (2, 4)
    assert nm.nm_pattern(n_of_m(4, 16, 1, 4)) == (1, 4)
    assert nm.nm_pattern(n_of_m(4, 16, 4, 8)) == (4, 8)
    assert nm.nm_pattern(unstructured(8, 64, 0.5)) is None  # dense row 2
    assert nm.nm_pattern(n_of_m(4, 18, 2, 2)) is None  # no pattern the kernel runs
    w = torch.zeros(1, 8)
    w[0, [1, 2, 4]] = torch.tensor([1.0, 2.0, 3.0])  # groups {1,2} and {0 (pad), 4 -> slot 0}
    values, idx = nm.nm_parts(w, 2, 4)
    assert values[0, :4].tolist() == [1.0, 2.0, 3.0, 0.0]
    positions = [(int(idx[0, 0]) >> (2 * i)) & 3 for i in range(4)]
    assert positions == [1, 2, 0, 1]  # the second group keeps column 4 and pads with column 5
    kernel = get_kernel("prunekit_nm")
    assert not kernel.fits(unstructured(8, 64, 0.5)) and kernel.fits(n_of_m(8, 64, 2, 4))
    with pytest.raises(ConfigError, match="N:M"):
        kernel.pack(unstructured(8, 64, 0.5))


def test_compiled_kernel_wide_layer_uses_int32_columns():
    kernel = kernel_or_skip("prunekit_csr")
    w = unstructured(3, 70_000, 0.99)
    packed = kernel.pack(w)
    assert packed["col"].dtype == torch.int32
    x = torch.randn(2, 70_000)
    assert rel_err(kernel.linear(x, packed, None, (3, 70_000)), x @ w.t()) <= 1e-5


def test_compiled_kernel_narrow_columns():
    kernel = kernel_or_skip("prunekit_csr")
    packed = kernel.pack(unstructured(4, 65_536, 0.99))
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


@pytest.mark.parametrize("source", [prunekit_csr.SOURCE, bitmask.SOURCE, nm.SOURCE])
def test_no_compile_env_falls_back(monkeypatch, source):
    monkeypatch.setenv("PRUNEKIT_NO_COMPILE", "1")
    assert _build._load.__wrapped__(source, "native") is None


@pytest.mark.parametrize("source", [prunekit_csr.SOURCE, bitmask.SOURCE, nm.SOURCE])
def test_broken_compiler_warns_and_falls_back(monkeypatch, tmp_path, source):
    monkeypatch.delenv("PRUNEKIT_NO_COMPILE", raising=False)
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    monkeypatch.setenv("PRUNEKIT_KERNEL_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match="could not build"):
        assert _build._load.__wrapped__(source, "native") is None
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


def test_without_a_compiler_a_fresh_process_falls_back_to_torch(tmp_path):
    """No compiler on PATH and an empty kernel cache: a warning, torch_csr only, right outputs."""
    import os
    import subprocess
    import sys

    code = (
        "import warnings, torch, prunekit as pk\n"
        "from prunekit.runtime import available_kernels, DecisionCache, sparsify_report\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    names = [k.name for k in available_kernels(torch.float32, torch.device('cpu'))]\n"
        "print(names)\n"
        "print(any('no C++ compiler' in str(w.message) for w in caught))\n"
        "torch.manual_seed(0)\n"
        "m = torch.nn.Linear(64, 32); pk.prune(m, 0.9); pk.finalize(m)\n"
        "x = torch.randn(3, 64); ref = m(x)\n"
        "s = pk.sparsify(m, min_speedup=1.0, kernels=names, cache=DecisionCache())\n"
        "with torch.no_grad(): print(bool(torch.allclose(s(x), ref, atol=1e-5)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "PRUNEKIT_NO_COMPILE")}
    env.update(PATH=str(tmp_path), PRUNEKIT_KERNEL_CACHE=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    names, warned, same = out.stdout.strip().splitlines()[-3:]
    assert names == "['torch_csr']" and warned == "True" and same == "True"


def test_unavailable_kernel_is_not_a_candidate(monkeypatch):
    from prunekit.runtime import available_kernels

    monkeypatch.setattr(prunekit_csr, "_function", lambda name: None)
    names = [k.name for k in available_kernels(torch.float32, torch.device("cpu"))]
    assert "prunekit_csr" not in names and "torch_csr" in names
