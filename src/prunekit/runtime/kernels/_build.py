"""Compile a kernel's C++ source once per machine and load it through ctypes.

The source has no torch headers, so a build takes about a second. The shared library is cached
under ``$PRUNEKIT_KERNEL_CACHE`` (default ``~/.cache/prunekit/kernels``) with a name that hashes
the source, the compiler, the flags and this CPU, so a changed source or another machine rebuilds.
Builds are atomic (compile to a temporary file, then rename). If no compiler works, or
``PRUNEKIT_NO_COMPILE=1`` is set, :func:`load_library` returns ``None`` and the caller falls back
to pure PyTorch.

``PRUNEKIT_KERNEL_ISA`` picks the instruction set the kernels are built for: ``native`` (the
default: everything this CPU has, AVX-512 and its VBMI2 expands included), ``avx512`` (AVX-512
F/BW/VL/DQ without VBMI2), ``avx2`` (AVX2 + FMA) or ``portable`` (the compiler's default target).
Each kernel source has a code path per level; the tests build every level this CPU can run. A
level this x86 CPU lacks is refused (warning) rather than built into a crash.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from abc import abstractmethod
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError
from .base import Kernel

#: compiler flags of each instruction-set level
ISA_FLAGS = {
    "native": ["-march=native"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "portable": [],
}
#: the /proc/cpuinfo flags an x86 CPU needs to run each level
ISA_CPU_FLAGS = {
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"},
    "avx2": {"avx2", "fma"},
}
_COMMON = ["-O3", "-fno-math-errno", "-fno-trapping-math"]


def flag_sets(isa: str) -> tuple[list[str], ...]:
    """The flag sets tried in order for ``isa``; the first that compiles wins."""
    arch = ISA_FLAGS[isa]
    return ([*_COMMON, *arch, "-fopenmp"], [*_COMMON, *arch], ["-O3"])


def default_isa() -> str:
    """The instruction-set level named by ``PRUNEKIT_KERNEL_ISA`` (default ``native``)."""
    isa = os.environ.get("PRUNEKIT_KERNEL_ISA", "native")
    if isa not in ISA_FLAGS:
        raise ConfigError(f"PRUNEKIT_KERNEL_ISA={isa!r} is not one of: {', '.join(ISA_FLAGS)}")
    return isa


def cache_dir() -> Path:
    root = os.environ.get("PRUNEKIT_KERNEL_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunekit" / "kernels"


def isa_runs_here(isa: str) -> bool:
    """Whether this CPU can run code built for ``isa`` (True where its flags are unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), None)
    except OSError:
        return True
    if line is None:  # not x86: the x86 flags fail to compile and the portable set is used
        return True
    return ISA_CPU_FLAGS.get(isa, set()) <= set(line.split(":", 1)[1].split())


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def load_library(source: Path, isa: str | None = None) -> ctypes.CDLL | None:
    """The compiled ``source`` as a loaded library, or ``None`` (warning once) if unavailable."""
    return _load(source, isa or default_isa())


@cache
def _load(source: Path, isa: str) -> ctypes.CDLL | None:
    if os.environ.get("PRUNEKIT_NO_COMPILE") == "1":
        return None
    if not isa_runs_here(isa):
        warnings.warn(
            f"prunekit: this CPU cannot run PRUNEKIT_KERNEL_ISA={isa}; "
            "using PyTorch sparse kernels",
            stacklevel=3,
        )
        return None
    cxx = _compiler()
    if cxx is None:
        warnings.warn("prunekit: no C++ compiler found; using PyTorch sparse kernels", stacklevel=3)
        return None
    # the source and the headers beside it (which it may include)
    text = b"\0".join(f.read_bytes() for f in [source, *sorted(source.parent.glob("*.h"))])
    errors = []
    for flags in flag_sets(isa):
        key = hashlib.sha256(
            b"\0".join([text, cxx.encode(), " ".join(flags).encode(), _cpu_fingerprint().encode()])
        ).hexdigest()[:16]
        target = cache_dir() / f"{source.stem}-{key}.so"
        if not target.exists():
            err = _compile(cxx, source, flags, target)
            if err is not None:
                errors.append(err)
                continue
        try:
            return ctypes.CDLL(str(target))
        except OSError as e:
            errors.append(str(e))
    warnings.warn(
        f"prunekit: could not build {source.name}; using PyTorch sparse kernels "
        f"({errors[-1].strip().splitlines()[-1] if errors else 'unknown error'})",
        stacklevel=3,
    )
    return None


def library_function(
    source: Path, name: str, argtypes: tuple, restype: Any = None, isa: str | None = None
) -> Callable[..., Any] | None:
    """Function ``name`` of the compiled ``source`` with its argument types set, or ``None``."""
    return _bind(source, name, argtypes, restype, isa or default_isa())


@cache
def _bind(source: Path, name: str, argtypes: tuple, restype: Any, isa: str):
    lib = _load(source, isa)
    if lib is None:
        return None
    fn = getattr(lib, name)
    fn.argtypes, fn.restype = list(argtypes), restype
    return fn


def prepared_linear(
    fn: Callable[..., Any],
    out: int,
    bias: torch.Tensor | None,
    arrays: list,
    dims: tuple[int, ...] = (),
    transpose: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x [n, in] -> y [n, out]`` through compiled ``fn(out, n, *dims, *arrays, x, bias, y,
    threads)``, with the function, sizes and array pointers bound once.

    With ``transpose`` the kernel reads ``x`` as is when ``n == 1`` and ``xt = x^T [in, n]`` when
    ``n > 1``; without, it always reads ``x [n, in]``. A non-zero return value is an error.
    """
    b = bias.contiguous() if bias is not None else None
    fixed = (*dims, *[a.data_ptr() for a in arrays])
    bias_ptr = b.data_ptr() if b is not None else None

    def run(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        xx = x.t().contiguous() if transpose and n > 1 else x.contiguous()
        y = torch.empty(n, out, dtype=torch.float32)
        if n == 0:
            return y
        rc = fn(out, n, *fixed, xx.data_ptr(), bias_ptr, y.data_ptr(), torch.get_num_threads())
        if rc:
            raise ConfigError(f"the compiled kernel refused its arguments (code {rc})")
        return y

    run.keep_alive = (arrays, b)  # type: ignore[attr-defined]  # the bound pointers' storage
    return run


class CompiledKernel(Kernel):
    """A kernel whose ``linear`` is a function of a compiled library (see :func:`load_library`).

    It takes fp32 inputs and stores values of ``value_dtype``.
    """

    value_dtype = torch.float32

    def input_dtype(self, packed: Mapping[str, torch.Tensor]) -> torch.dtype:
        return torch.float32

    @abstractmethod
    def bind(
        self, packed: Mapping[str, torch.Tensor], shape: tuple[int, int]
    ) -> tuple[Callable[..., Any] | None, list, tuple[int, ...], bool]:
        """``(function or None, arrays, dims, transpose)`` for :func:`prepared_linear`."""

    def prepare(self, packed, bias, shape):
        values = packed["values"].dtype
        if values != self.value_dtype:  # e.g. the module was converted with .double()
            raise ConfigError(
                f"{self.name} runs {self.value_dtype} values, these are {values}: convert the "
                "model back with .float(), or unsparsify it first"
            )
        fn, arrays, dims, transpose = self.bind(packed, shape)
        if fn is None:
            raise ConfigError(f"the {self.name} library is not available in this process")
        return prepared_linear(fn, shape[0], bias, arrays, dims, transpose)

    def linear(self, x, packed, bias, shape):
        return self.prepare(packed, bias, shape)(x)


def _compile(cxx: str, source: Path, flags: list[str], target: Path) -> str | None:
    """Compile to a temporary file beside ``target`` and rename it; the error text on failure."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as e:
        return str(e)
    cmd = [cxx, *flags, "-shared", "-fPIC", f"-I{source.parent}", "-o", tmp, str(source)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return proc.stderr or f"{cxx} exited with {proc.returncode}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
