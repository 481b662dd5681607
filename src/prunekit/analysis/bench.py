"""``bench``: a saved (pruned) model against its dense twin: size on disk, weight memory, latency.

The dense twin is the same network with every weight stored and multiplied densely. Its size on
disk is that of a plain safetensors file of its state dict; its memory is its parameters and
buffers; its latency is the model before :func:`~prunekit.runtime.sparsify.sparsify`. The pruned
side is the checkpoint directory as written (every file in it) and the model after sparsify.
Dense and sparse latency are measured interleaved in one run (sparsify's end-to-end timing).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from ..errors import ConfigError
from ..runtime import DecisionCache, SparsifyReport, Timer, sparsify, sparsify_report
from ..runtime.report import as_text, fmt_ms, fmt_x


@dataclass
class BenchResult:
    dense_disk_bytes: int
    #: bytes of the saved checkpoint (None when the model came from no file)
    disk_bytes: int | None
    sparsify: SparsifyReport
    input_shape: list[int]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rep = self.sparsify
        return {
            "input_shape": self.input_shape,
            "threads": rep.threads,
            "disk": {"dense_bytes": self.dense_disk_bytes, "bytes": self.disk_bytes},
            "memory": {"dense_bytes": rep.weight_bytes_before, "bytes": rep.weight_bytes_after},
            "latency": {
                "dense_s": rep.model_dense_s,
                "sparse_s": rep.model_sparse_s,
                "speedup": rep.realized_model_speedup,
                "simulated_speedup": rep.simulated_speedup,
            },
            "sparsify": rep.to_dict(),
            **self.extra,
        }

    def __rich__(self) -> Table:
        rep = self.sparsify
        table = Table(title="prunekit bench: pruned vs dense twin")
        for col in ("", "dense twin", "pruned", "ratio"):
            table.add_column(col, justify="left" if not col else "right")
        table.add_row(
            "size on disk",
            _mib(self.dense_disk_bytes),
            _mib(self.disk_bytes),
            _ratio(self.disk_bytes, self.dense_disk_bytes),
        )
        table.add_row(
            "weight memory",
            _mib(rep.weight_bytes_before),
            _mib(rep.weight_bytes_after),
            _ratio(rep.weight_bytes_after, rep.weight_bytes_before),
        )
        table.add_row(
            "latency",
            fmt_ms(rep.model_dense_s),
            fmt_ms(rep.model_sparse_s),
            _ratio(rep.model_sparse_s, rep.model_dense_s),
        )
        swapped = sum(r.swapped for r in rep.layers)
        sim = rep.simulated_speedup
        table.caption = (
            f"input {'x'.join(map(str, self.input_shape))}, {rep.threads} thread(s) | "
            f"{swapped}/{len(rep.layers)} layers on sparse kernels | speedup realized "
            f"{fmt_x(rep.realized_model_speedup)}, simulated {fmt_x(sim)} (non-zero MACs)"
        )
        return table

    def __str__(self) -> str:
        return as_text(self)


def directory_bytes(path: str | os.PathLike) -> int:
    """Total size of the regular files in ``path`` (recursively), or of ``path`` if a file."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


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
) -> torch.Tensor:
    """An input for ``model``: ``shape`` if given; token ids for a Hugging Face language model;
    otherwise ``[batch, in_features]`` of its first Linear."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if shape:
        return torch.randn(*shape, dtype=dtype)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int):
        return torch.randint(0, vocab, (batch_size, seq_len))
    first = next(
        (m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))), None
    )
    if isinstance(first, nn.Linear):
        return torch.randn(batch_size, first.in_features, dtype=dtype)
    raise ConfigError("cannot guess this model's input; pass its shape (--input-shape 1,3,224,224)")


@torch.no_grad()
def bench(
    model: nn.Module,
    path: str | os.PathLike | None,
    inputs: torch.Tensor | tuple,
    *,
    timer: Timer | None = None,
    cache: DecisionCache | None = None,
    **sparsify_options: Any,
) -> tuple[nn.Module, BenchResult]:
    """Measure ``model`` (loaded from checkpoint ``path``) against its dense twin.

    Sparsifies ``model`` in place (returned, in case it is a single layer) at the input size of
    ``inputs``; the dense twin's latency is the model before the swap, timed interleaved.
    """
    dense_disk = dense_safetensors_bytes(model)
    disk = directory_bytes(path) if path is not None else None
    model.eval()
    fast = sparsify(
        model,
        example_inputs=inputs,
        timer=timer,
        cache=cache if cache is not None else DecisionCache(),
        **sparsify_options,
    )
    rep = sparsify_report(fast)
    if rep.model_dense_s is None:  # nothing was swapped: the twin is the model itself
        inputs_t = inputs if isinstance(inputs, tuple) else (inputs,)
        t = (timer or _default_timer())({"dense": lambda: model(*inputs_t)})
        rep.model_dense_s = rep.model_sparse_s = t["dense"]
        rep.realized_model_speedup = 1.0
    shape = list((inputs[0] if isinstance(inputs, tuple) else inputs).shape)
    return fast, BenchResult(dense_disk, disk, rep, shape)


def _default_timer() -> Timer:
    from ..runtime import MedianTimer

    return MedianTimer()


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.1%}"
