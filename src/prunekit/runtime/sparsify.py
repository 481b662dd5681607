"""``pk.sparsify(model)``: swap pruned layers for sparse kernels where that is measured faster.

For each pruned Linear (or Hugging Face Conv1D, or pointwise conv), every available kernel that
can hold its weight is packed and timed against the dense layer on an input of the expected size,
interleaved in one run (see :mod:`.timing`). The fastest kernel replaces the layer only if it beats
dense by ``min_speedup``; otherwise the dense layer stays. With ``example_inputs`` the whole model
is then timed end to end, dense against swapped, in interleaved rounds, and the swaps are undone
if the swapped model is not faster: sparsify does not make a model slower. Decisions are cached by
layer shape, sparsity bucket, rows, threads and dtype (see :mod:`.cache`). Kernels that store
values at lower precision (``*_bf16``, ``*_int8``) change outputs slightly and are tried only
when named in ``kernels``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, check_fraction
from ..targets import Selector, Target, select_targets
from .cache import DEFAULT_CACHE, DecisionCache, LayerKey
from .kernels import KERNELS, available_kernels, get_kernel
from .memory import weight_bytes
from .module import SPARSIFIABLE, SparseLinear, is_pointwise_conv, is_sparsifiable
from .report import DENSE, LayerDecision, SparsifyReport
from .timing import MedianTimer, Timer, last_level_cache_bytes

REPORT_ATTR = "_pk_sparsify_report"


def sparsify(
    model: nn.Module,
    batch_size: int = 1,
    *,
    example_inputs: Any = None,
    kernels: Sequence[str] | None = None,
    min_sparsity: float = 0.3,
    min_speedup: float = 1.1,
    include: Sequence[Selector] | Selector | None = None,
    exclude: Sequence[Selector] | Selector | None = None,
    timer: Timer | None = None,
    cache: DecisionCache | None = None,
    cache_file: str | os.PathLike | None = None,
    cold: bool | None = None,
) -> nn.Module:
    """Swap each pruned layer of ``model`` (in place) for a sparse kernel where measured faster.

    ``batch_size`` is the number of input rows each layer is timed at (batch x tokens). Passing
    ``example_inputs`` (a tensor, a tuple of positional inputs, or a dict of keyword inputs such
    as a tokenizer's ``{"input_ids": ...}``) instead records each layer's real input size, then
    times the whole model, dense against swapped, and undoes every swap if the swapped model is
    not faster end to end. ``kernels`` limits the candidates (and is the only way to get the
    inexact ``*_bf16`` and ``*_int8`` ones); ``min_speedup`` is the margin a kernel must beat
    dense by. ``cold`` times each layer with the CPU caches flushed, as it runs inside a model too
    large for them; by default that is so when the model's weights exceed twice the last-level
    cache. Returns the model (a new module only when ``model`` itself is a single layer);
    :func:`sparsify_report` gives the report.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    min_sparsity = check_fraction("min_sparsity", min_sparsity)
    if (
        isinstance(min_speedup, bool)
        or not isinstance(min_speedup, (int, float))
        or min_speedup < 1
    ):
        raise ConfigError(f"min_speedup must be a number >= 1, got {min_speedup!r}")
    names = None
    if kernels is not None:
        names = [KERNELS.get(k) and k for k in ([kernels] if isinstance(kernels, str) else kernels)]
    inputs = _as_call(example_inputs)
    if cache is None:
        cache = DecisionCache(cache_file) if cache_file is not None else DEFAULT_CACHE
    targets = select_targets(model, include, exclude)
    before = weight_bytes(model)
    if cold is None:
        cold = before > 2 * last_level_cache_bytes()
    timer = timer if timer is not None else MedianTimer(flush=cold)
    shapes = _record_input_shapes(model, targets, inputs) if inputs is not None else {}

    opts = _Options(batch_size, names, min_sparsity, min_speedup, timer, cache, cold)
    decisions, swaps = [], {}
    for t in targets:
        decision, sparse = _decide(t, shapes.get(t.name), opts)
        decisions.append(decision)
        if sparse is not None:
            swaps[t.name] = (t.module, sparse)

    rep = SparsifyReport(
        decisions, batch_size, torch.get_num_threads(), float(min_speedup), before, 0
    )
    rep.extra["cold_cache_timing"] = bool(cold)
    rep.extra["end_to_end_checked"] = inputs is not None and bool(swaps)
    if inputs is not None and swaps:
        args, kwargs = inputs
        times = timer(
            {DENSE: lambda: model(*args, **kwargs), "sparse": lambda: model(*args, **kwargs)},
            {DENSE: lambda: _install(model, swaps, 0), "sparse": lambda: _install(model, swaps, 1)},
        )
        rep.model_dense_s, rep.model_sparse_s = times[DENSE], times["sparse"]
        rep.realized_model_speedup = times[DENSE] / times["sparse"]
        if times["sparse"] > times[DENSE]:  # slower end to end: keep the dense model
            _install(model, swaps, 0)
            for row in decisions:
                if row.swapped:
                    row.kernel = DENSE
                    row.reason = f"undone: model {rep.realized_model_speedup:.2f}x end to end"
            swaps = {}
            rep.realized_model_speedup = 1.0
    if "" in swaps:  # the model is itself one layer
        model = swaps[""][1]
    else:
        _install(model, swaps, 1)
    rep.weight_bytes_after = weight_bytes(model)
    model.__dict__[REPORT_ATTR] = rep
    cache.save()
    return model


def unsparsify(model: nn.Module) -> nn.Module:
    """Put dense layers back in place of every sparse-kernel module (e.g. before ``pk.save``).

    Returns the model (a new module only when ``model`` itself is a sparse layer).
    """
    if isinstance(model, SparseLinear):
        return model.to_dense_module()
    for name, m in list(model.named_modules()):
        if isinstance(m, SparseLinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, m.to_dense_module())
    model.__dict__.pop(REPORT_ATTR, None)
    return model


def sparsify_report(model: nn.Module) -> SparsifyReport:
    """The report of the last :func:`sparsify` call on ``model``."""
    rep = model.__dict__.get(REPORT_ATTR)
    if rep is None:
        raise ConfigError("this model has not been through prunekit.sparsify")
    return rep


@dataclass(frozen=True)
class _Options:
    batch_size: int
    names: list[str] | None
    min_sparsity: float
    min_speedup: float
    timer: Timer
    cache: DecisionCache
    cold: bool


def _decide(
    t: Target, shape: tuple[int, ...] | None, opts: _Options
) -> tuple[LayerDecision, SparseLinear | None]:
    """Time dense against each candidate kernel (or reuse a cached timing) and choose."""
    m, w = t.module, t.weight
    matrix = t.matrix()
    out, inp = matrix.shape
    rows = _rows(shape, inp) if shape is not None else opts.batch_size
    sparsity = 1.0 - int(torch.count_nonzero(matrix)) / max(1, matrix.numel())
    row = LayerDecision(t.name, type(m).__name__, [out, inp], rows, sparsity, DENSE, "")
    if not is_sparsifiable(m):
        row.reason = f"not {SPARSIFIABLE}"
        return row, None
    if sparsity < opts.min_sparsity:
        row.reason = f"sparsity below {opts.min_sparsity:.0%}"
        return row, None
    kernels = [
        k
        for k in available_kernels(w.dtype, w.device)
        if (k.name in opts.names if opts.names is not None else k.exact)
        and k.accepts((out, inp))
        and k.fits(matrix)
    ]
    if not kernels:
        row.reason = f"no kernel for {w.dtype} on {w.device.type}"
        return row, None
    key = LayerKey(
        "conv" if is_pointwise_conv(m) else "linear",
        out,
        inp,
        round(sparsity * 100),
        rows,
        torch.get_num_threads(),
        str(w.dtype),
        w.device.type,
        ",".join(f"{k.name}@{k.version}" for k in kernels),
        opts.cold,
    )
    times = opts.cache.get(key)
    packed: dict[str, SparseLinear] = {}
    row.cached = times is not None
    if times is None:
        packed = {k.name: SparseLinear.from_module(m, k.name) for k in kernels}
        x = torch.randn(shape or _synthetic_shape(m, rows, inp), dtype=w.dtype, device=w.device)
        candidates = {DENSE: lambda: m(x)}
        candidates.update({name: (lambda s=s: s(x)) for name, s in packed.items()})
        times = opts.timer(candidates)
        opts.cache.put(key, times)
    row.candidates = times
    row.dense_s = times[DENSE]
    best = min((k.name for k in kernels), key=lambda n: times[n])
    row.best_kernel, row.sparse_s = best, times[best]
    if row.dense_s < opts.min_speedup * row.sparse_s:
        row.reason = "dense is faster" if row.dense_s <= row.sparse_s else "below min_speedup"
        return row, None
    row.kernel, row.reason = best, "faster"
    row.code_path = get_kernel(best).label()
    return row, packed.get(best) or SparseLinear.from_module(m, best)


def _rows(shape: tuple[int, ...], inp: int) -> int:
    n = 1
    for d in shape:
        n *= d
    return max(1, n // inp)


def _synthetic_shape(m: nn.Module, rows: int, inp: int) -> tuple[int, ...]:
    """An input of ``rows`` rows: ``[rows, in]``, or ``[1, in, rows, 1, ...]`` for a conv."""
    if is_pointwise_conv(m):
        return (1, inp, rows) + (1,) * (len(m.kernel_size) - 1)
    return (rows, inp)


def _as_call(example_inputs: Any) -> tuple[tuple, dict[str, Any]] | None:
    """``(args, kwargs)`` for ``model(*args, **kwargs)``: a tensor, a tuple/list, or a mapping."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, Mapping):  # e.g. a tokenizer's BatchEncoding
        if not all(isinstance(k, str) for k in example_inputs):
            raise ConfigError("example_inputs as a mapping needs string keys (keyword arguments)")
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    raise ConfigError(
        "example_inputs must be a tensor, a tuple or list of positional inputs, or a dict of "
        f"keyword inputs; got {type(example_inputs).__name__}"
    )


@torch.no_grad()
def _record_input_shapes(
    model: nn.Module, targets: list[Target], inputs: tuple[tuple, dict[str, Any]]
) -> dict[str, tuple[int, ...]]:
    """The input shape each target layer sees in one forward pass over ``inputs``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    hooks = [
        t.module.register_forward_pre_hook(record(t.name))
        for t in targets
        if is_sparsifiable(t.module)
    ]
    try:
        model(*inputs[0], **inputs[1])
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _install(model: nn.Module, swaps: dict[str, tuple[nn.Module, nn.Module]], which: int) -> None:
    """Put the dense (``which=0``) or sparse (``which=1``) module of each swap into ``model``."""
    for name, pair in swaps.items():
        if not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if parent._modules.get(child) is not pair[which]:
            parent._modules[child] = pair[which]
