"""``bench``: a pruned model against the model it was pruned from: size on disk, resident weight
memory and latency, each as a ratio that reads the same way (baseline / pruned: above 1 is better).

The baseline is the unpruned model (``prunekit prune`` records which one, or ``--baseline``), so
a physically shrunk model shows its real speedup. Without one, the baseline is the pruned model's
*dense twin*: the same network before :func:`~prunekit.runtime.sparsify` moves layers to sparse
kernels, sized as a plain safetensors file of its state dict.

With ``optimize`` both models are first put through
:func:`~prunekit.runtime.fuse.optimize_for_inference` (BatchNorm folded into the conv before it,
``channels_last`` optionally), each checked against its unoptimised self, so that the comparison
is between the two models as they would be deployed; the result records what was folded.

Latency: the models run in interleaved rounds (rotating order, so that load hits all alike); each
reports min / median / max per call. At one thread the clock is the calling thread's CPU time,
which other processes' load does not inflate; the wall-clock time and the load average are
recorded too, and a warning says when the machine was too busy for the figures to hold.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from ..errors import ConfigError
from ..example_inputs import call, for_model
from ..runtime import DecisionCache, SparsifyReport, sparsify, sparsify_report, weight_bytes
from ..runtime.fuse import InferenceReport, inference_report, optimize_for_inference
from ..runtime.report import as_text
from ..runtime.timing import default_clock


@dataclass
class Latency:
    """Per-call seconds of one model over the timed rounds."""

    samples: list[float]
    wall: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_dict(self) -> dict[str, float]:
        return {
            "min_s": min(self.samples),
            "median_s": self.median,
            "max_s": max(self.samples),
            "wall_median_s": statistics.median(self.wall),
            "rounds": len(self.samples),
        }


@dataclass
class Side:
    """One of the two models compared."""

    label: str
    disk_bytes: int | None
    weight_bytes: int
    latency: Latency


@dataclass
class BenchResult:
    baseline: Side
    pruned: Side
    inputs: dict[str, Any]
    threads: int
    clock: str
    load: dict[str, float]
    sparsify: SparsifyReport | None
    warnings: list[str] = field(default_factory=list)
    #: the pruned model with dense kernels, when sparsify swapped layers (attributes the gain)
    pruned_dense: Latency | None = None
    #: what optimize_for_inference did to each model ("baseline", "pruned"; a dense twin is a
    #: copy of the optimised pruned model), when asked to
    optimized: dict[str, InferenceReport] = field(default_factory=dict)

    def ratios(self) -> dict[str, float | None]:
        """baseline / pruned for size on disk, weight memory and latency (> 1: better)."""
        b, p = self.baseline, self.pruned
        disk = b.disk_bytes / p.disk_bytes if b.disk_bytes and p.disk_bytes else None
        return {
            "disk": disk,
            "memory": b.weight_bytes / p.weight_bytes,
            "latency": b.latency.median / p.latency.median,
        }

    def to_dict(self) -> dict[str, Any]:
        r = self.ratios()
        side = {
            s: {
                "label": v.label,
                "disk_bytes": v.disk_bytes,
                "weight_bytes": v.weight_bytes,
                "latency": v.latency.to_dict(),
            }
            for s, v in (("baseline", self.baseline), ("pruned", self.pruned))
        }
        return {
            **side,
            "ratios": {"smaller_on_disk": r["disk"], "less_memory": r["memory"],
                       "faster": r["latency"]},
            "inputs": self.inputs,
            "threads": self.threads,
            "clock": self.clock,
            "load": self.load,
            "warnings": self.warnings,
            "pruned_dense_kernels": (
                None if self.pruned_dense is None else self.pruned_dense.to_dict()
            ),
            "sparsify": None if self.sparsify is None else self.sparsify.to_dict(),
            "optimized": {k: v.to_dict() for k, v in self.optimized.items()},
        }  # fmt: skip

    def __rich__(self) -> Table:
        r = self.ratios()
        b, p = self.baseline, self.pruned
        table = Table(title=f"prunekit bench: pruned vs {b.label}")
        for col in ("", b.label, "pruned", "ratio"):
            table.add_column(col, justify="left" if not col else "right")
        table.add_row(
            "size on disk", _mib(b.disk_bytes), _mib(p.disk_bytes), _x(r["disk"], "smaller")
        )
        table.add_row(
            "weight memory", _mib(b.weight_bytes), _mib(p.weight_bytes), _x(r["memory"], "less")
        )
        table.add_row(
            "latency (median)", _ms(b.latency.median), _ms(p.latency.median),
            _x(r["latency"], "faster"),
        )  # fmt: skip
        table.add_row("latency min..max", _spread(b.latency), _spread(p.latency), "")
        if self.pruned_dense is not None:
            table.add_row(
                "  pruned, dense kernels", "", _ms(self.pruned_dense.median),
                _x(b.latency.median / self.pruned_dense.median, "faster"),
            )  # fmt: skip
        swapped = "-"
        if self.sparsify is not None:
            swapped = f"{sum(d.swapped for d in self.sparsify.layers)}/{len(self.sparsify.layers)}"
        table.caption = (
            f"inputs {_shapes(self.inputs)}; {self.threads} thread(s), {self.clock}, "
            f"{len(p.latency.samples)} interleaved rounds; load average {self.load['before']:.2f}"
            f" -> {self.load['after']:.2f} on {self.load['cpus']:.0f} CPUs; {swapped} layers on "
            "sparse kernels; ratios are baseline / pruned (above 1 is better)"
        )
        for side, rep in self.optimized.items():
            table.caption += f"\n{side} optimised for inference: {rep}"
        return table

    def __str__(self) -> str:
        return as_text(self)


def directory_bytes(path: str | os.PathLike) -> int:
    """Total size of the regular files in ``path`` (recursively), or of ``path`` if a file."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def model_folder_bytes(path: str | os.PathLike) -> int:
    """What a model folder is made of: its top-level weight files (safetensors, else .bin), its
    config and the files a pruned copy carries over; not other runtimes' exports or the card."""
    from ..outfolder import carried_files

    path = Path(path)
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    files = [*weights, *(path / f for f in carried_files(path))]
    files += [path / n for n in ("config.json", "prunekit.json") if (path / n).is_file()]
    return sum(f.stat().st_size for f in files)


def dense_safetensors_bytes(model: nn.Module) -> int:
    """Size of a plain safetensors file of ``model.state_dict()`` (shared storage once).

    Computed, not written: 8 bytes of header length, the JSON header, then the raw tensors.
    """
    header: dict[str, Any] = {}
    seen: set[tuple[int, int]] = set()
    offset = 0
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen and t.untyped_storage().data_ptr() != 0:
            continue  # a tied weight is written once
        seen.add(key)
        n = t.numel() * t.element_size()
        dtype = _ST_DTYPES.get(t.dtype, str(t.dtype).removeprefix("torch.").upper())
        header[name] = {
            "dtype": dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    text = json.dumps(header, separators=(",", ":"))
    return 8 + len(text) + (-len(text)) % 8 + offset


_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def example_input(
    model: nn.Module, batch_size: int = 1, seq_len: int = 16, shape: list[int] | None = None
) -> Any:
    """An input for ``model`` (see :func:`prunekit.example_inputs.for_model`)."""
    return for_model(model, shape, batch_size, seq_len)


Sampler = Callable[[Mapping[str, Callable[[], object]], int], dict[str, Latency]]


@torch.inference_mode()
def interleaved(candidates: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, Latency]:
    """Per-call times of each candidate over ``rounds`` rounds in rotating order, after warm-up:
    the default clock (thread CPU time at one thread) and wall-clock time side by side."""
    clock = default_clock()
    names = list(candidates)
    for n in names:
        for _ in range(3):
            candidates[n]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for i in range(len(names)):
            n = names[(i + r) % len(names)]
            w0, t0 = time.perf_counter(), clock()
            candidates[n]()
            samples[n].append(clock() - t0)
            wall[n].append(time.perf_counter() - w0)
    return {n: Latency(samples[n], wall[n]) for n in names}


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not on every platform
        return float("nan")


@torch.no_grad()
def bench(
    model: nn.Module,
    path: str | os.PathLike | None,
    inputs: Any,
    *,
    baseline: nn.Module | None = None,
    baseline_path: str | os.PathLike | None = None,
    baseline_bytes: int | None = None,
    rounds: int = 30,
    sampler: Sampler = interleaved,
    use_sparse_kernels: bool = True,
    cache: DecisionCache | None = None,
    optimize: bool = False,
    channels_last: bool = False,
    **sparsify_options: Any,
) -> tuple[nn.Module, BenchResult]:
    """Measure ``model`` (saved in folder ``path``) against ``baseline`` (the unpruned model,
    loaded from ``baseline_path``), or against its dense twin when there is none.

    ``model`` is first moved to sparse kernels where measured faster (:func:`sparsify`, in place;
    returned). ``inputs`` is a tensor, a tuple of positional inputs or a dict of keyword inputs.
    ``optimize`` (implied by ``channels_last``) times optimised copies of both models
    (:func:`~prunekit.runtime.fuse.optimize_for_inference`); the one returned is optimised too.
    """
    if rounds < 3:
        raise ConfigError(f"rounds must be at least 3, got {rounds}")
    model.eval()
    load_before = _load()
    optimized: dict[str, InferenceReport] = {}
    if optimize or channels_last:
        model = _optimized(model, inputs, channels_last, optimized, "pruned")
        if baseline is not None:
            baseline = _optimized(baseline.eval(), inputs, channels_last, optimized, "baseline")
    twin = copy.deepcopy(model)
    fast, rep = model, None
    if use_sparse_kernels:
        fast = sparsify(
            model, example_inputs=inputs, cache=cache or DecisionCache(), **sparsify_options
        )
        rep = sparsify_report(fast)
    swapped = rep is not None and any(d.swapped for d in rep.layers)
    if baseline is not None:
        baseline.eval()
        base_label = "baseline"
        base_disk = baseline_bytes
        if base_disk is None and baseline_path is not None:
            base_disk = model_folder_bytes(baseline_path) if Path(baseline_path).is_dir() else (
                directory_bytes(baseline_path))  # fmt: skip
        if base_disk is None:
            base_disk = dense_safetensors_bytes(baseline)
    else:
        baseline, base_label, base_disk = twin, "dense twin", dense_safetensors_bytes(twin)
    candidates = {"baseline": lambda: call(baseline, inputs), "pruned": lambda: call(fast, inputs)}
    if swapped and baseline is not twin:
        candidates["pruned, dense kernels"] = lambda: call(twin, inputs)
    lat = sampler(candidates, rounds)
    load_after = _load()
    threads = torch.get_num_threads()
    result = BenchResult(
        baseline=Side(base_label, base_disk, weight_bytes(baseline), lat["baseline"]),
        pruned=Side(
            "pruned",
            directory_bytes(path) if path is not None else None,
            weight_bytes(fast),
            lat["pruned"],
        ),
        inputs=_describe(inputs),
        threads=threads,
        clock="thread CPU time" if default_clock() is time.thread_time else "wall-clock time",
        load={"before": load_before, "after": load_after, "cpus": float(os.cpu_count() or 1)},
        sparsify=rep,
        pruned_dense=lat.get("pruned, dense kernels"),
        optimized=optimized,
    )
    result.warnings = reliability_warnings(result)
    return fast, result


def _optimized(
    model: nn.Module, inputs: Any, channels_last: bool, reports: dict, side: str
) -> nn.Module:
    """An optimised copy of ``model`` (eval mode); its report goes to ``reports[side]``."""
    fast = optimize_for_inference(model, inputs, channels_last=channels_last)
    reports[side] = inference_report(fast)
    return fast


def reliability_warnings(result: BenchResult) -> list[str]:
    """Why the latency figures may not hold: a busy machine, or a wide spread between rounds."""
    out = []
    cpus = result.load["cpus"]
    busy = max(result.load["before"], result.load["after"]) - result.threads
    if busy > 0.5 * max(1.0, cpus - result.threads):
        out.append(
            f"the machine is busy (load average {max(result.load.values()):.2f} on {cpus:.0f} "
            "CPUs): other processes compete for the cores and the caches, so latency figures "
            "may be off; rerun on an idle machine"
        )
    for side in (result.baseline, result.pruned):
        lat = side.latency
        wall = statistics.median(lat.wall)
        if lat.median and wall > 1.3 * lat.median and result.clock == "thread CPU time":
            out.append(
                f"{side.label}: wall-clock time is {wall / lat.median:.1f}x the CPU time: the "
                "thread was preempted; the CPU-time figures stand, wall-clock ones would not"
            )
        if min(lat.samples) > 0 and max(lat.samples) > 3 * min(lat.samples):
            out.append(
                f"{side.label}: rounds range {_spread(lat)}, a spread over 3x: unreliable timing"
            )
    return out


def _describe(inputs: Any) -> dict[str, Any]:
    if isinstance(inputs, dict):
        return {k: list(v.shape) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    if isinstance(inputs, tuple):
        return {str(i): list(v.shape) for i, v in enumerate(inputs)}
    return {"input": list(inputs.shape)}


def _shapes(inputs: dict[str, Any]) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in inputs.items())


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def _spread(lat: Latency) -> str:
    return f"{min(lat.samples) * 1e3:.3f}..{max(lat.samples) * 1e3:.3f} ms"


def _x(ratio: float | None, word: str) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x {word}"
