"""Forward hooks that feed the registered statistics, and whole-model collection."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import track
from ..targets import Target
from .batches import as_batches, calibration_mode, model_device, run_batch
from .memory import release_freed_memory
from .statistics import (
    STATISTICS,
    InputStats,
    LayerStats,
    OutputStats,
    Statistic,
    channel_dim,
    output_rows,
    signature,
)

_PASSTHROUGH = (nn.Identity, nn.Dropout, nn.modules.batchnorm._BatchNorm)


def is_activation(module: nn.Module) -> bool:
    """A parameterless activation module: torch.nn's activations or transformers' ``ACT2FN``."""
    return (
        type(module).__module__ in ("torch.nn.modules.activation", "transformers.activations")
        and not any(True for _ in module.parameters(recurse=False))
        and not isinstance(module, (nn.MultiheadAttention, nn.Softmax, nn.LogSoftmax))
    )


def resolve_statistics(kinds: Iterable[str]) -> dict[str, list[type[Statistic]]]:
    """The statistic classes to run for ``kinds``, by source; implied ones are skipped."""
    kinds = frozenset(kinds)
    unknown = sorted(k for k in kinds if k not in STATISTICS)
    if unknown:
        raise ConfigError(f"unknown statistics {unknown}; known: {STATISTICS.names()}")
    out: dict[str, list[type[Statistic]]] = {"input": [], "output": []}
    for name in sorted(kinds):
        stat = STATISTICS.get(name)
        if not stat.implied_by & kinds:
            out[stat.source].append(stat)
    return out


class Collector:
    """Forward hooks that gather ``kinds`` statistics for ``targets`` while active (a context).

    ``root`` is searched for activation modules that consume a target's output (through BN,
    dropout or identity), for the output statistics.
    """

    def __init__(self, targets: list[Target], kinds: Iterable[str], root: nn.Module) -> None:
        self.by_source = resolve_statistics(kinds)
        self.targets, self.root = targets, root
        self.stats: dict[str, LayerStats] = {t.qualname: LayerStats() for t in targets}
        self._shared: list[InputStats] = []
        self._pending: dict[int, tuple[weakref.ref, str, int]] = {}
        self._handles: list[Any] = []

    def _input_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                raise ConfigError(f"{name} was called without a positional input tensor")
            x = args[0]
            st = self.stats[name]
            if st.inputs is None:  # first call: share with a layer that saw this very tensor
                sig = signature(module)
                st.inputs = next(
                    (s for s in self._shared if s.seen(x) and s.signature == sig), None
                )
                if st.inputs is None:
                    st.inputs = InputStats(self.by_source["input"], sig)
                    self._shared.append(st.inputs)
            if not st.inputs.seen(x):
                st.inputs.add(module, x)

        return hook

    def _output_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            st = self.stats[name]
            st.raw_outputs = st.raw_outputs or OutputStats(self.by_source["output"])
            dim = channel_dim(module)
            st.raw_outputs.add(output_rows(output.detach(), dim).clamp_min(0))
            self._pending[id(output)] = (weakref.ref(output), name, dim)

        return hook

    def _follow_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        """On BN / dropout / identity / activations: follow a pending target output."""
        if not args or not isinstance(args[0], torch.Tensor):
            return
        entry = self._pending.get(id(args[0]))
        if entry is None or entry[0]() is not args[0]:
            return
        _, name, dim = entry
        if is_activation(module):
            st = self.stats[name]
            st.outputs = st.outputs or OutputStats(self.by_source["output"])
            st.outputs.add(output_rows(output.detach(), dim))
        elif isinstance(output, torch.Tensor):
            self._pending[id(output)] = (weakref.ref(output), name, dim)

    def __enter__(self) -> Collector:
        wants_outputs = bool(self.by_source["output"])
        for t in self.targets:
            if self.by_source["input"]:
                self._handles.append(t.module.register_forward_hook(self._input_hook(t.qualname)))
            if wants_outputs:
                self._handles.append(t.module.register_forward_hook(self._output_hook(t.qualname)))
        if wants_outputs:
            for m in self.root.modules():
                if isinstance(m, _PASSTHROUGH) or is_activation(m):
                    self._handles.append(m.register_forward_hook(self._follow_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pending.clear()

    def end_batch(self) -> None:
        self._pending.clear()

    def check_seen(self) -> None:
        """Raise if a target was never called while statistics were being gathered."""
        if not any(self.by_source.values()):
            return
        for name, st in self.stats.items():
            if st.inputs is None and st.raw_outputs is None:
                raise ConfigError(
                    f"{name} was never called during calibration; exclude it or check the data"
                )


@torch.no_grad()
def collect(
    model: nn.Module,
    targets: list[Target],
    data: Any,
    kinds: Iterable[str],
    progress: bool = False,
) -> dict[str, LayerStats]:
    """Whole-model hooks: one forward pass per batch; statistics keyed by ``Target.qualname``."""
    batches = as_batches(data)
    device = model_device(model)
    with calibration_mode(model), Collector(targets, kinds, model) as col:
        for i, batch in enumerate(track(batches, "calibrating", progress)):
            run_batch(model, batch, i, device)
            col.end_batch()
    col.check_seen()
    all_reduce(col.stats)
    release_freed_memory()  # the forward passes' temporaries, before the solves
    return col.stats


def all_reduce(stats: dict[str, LayerStats]) -> None:
    """Sum the statistics over ranks when ``torch.distributed`` is initialised (each rank
    calibrated on its own batches). Shared accumulators are reduced once."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    done: set[int] = set()
    for st in stats.values():
        for acc in st.accumulators():
            if id(acc) in done:
                continue
            done.add(id(acc))
            for value in acc.values.values():
                dist.all_reduce(value)
            n = torch.tensor([acc.n], dtype=torch.float64)
            dist.all_reduce(n)
            acc.n = int(n.item())
