"""Cached timing decisions: measured once per layer shape, sparsity bucket, batch and thread count.

In memory for the process (:data:`DEFAULT_CACHE`), and optionally in a JSON file that remembers
decisions across runs. A file written on another machine (CPU, torch version) is ignored, since its
timings say nothing about this one. Writes are atomic.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import ConfigError

FORMAT = 2


@dataclass(frozen=True)
class LayerKey:
    """What a timing decision depends on."""

    kind: str  # "linear" | "conv"
    out_features: int
    in_features: int
    sparsity_pct: int  # sparsity rounded to a whole percent
    rows: int  # rows of the [rows, in] input matrix (batch x tokens x pixels)
    threads: int
    dtype: str
    device: str
    kernels: str  # "name@version,..." of the candidates measured
    cold: bool  # timed with caches flushed before each call

    def text(self) -> str:
        return "|".join(str(v) for v in asdict(self).values())


def machine() -> str:
    """Identifies where timings were taken: CPU model, core count, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return f"{cpu}|{os.cpu_count()} cpus|torch {torch.__version__}"


class DecisionCache:
    """``LayerKey -> {candidate name: median seconds}``, optionally backed by a JSON file."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, dict[str, float]] = {}
        if self.path is not None and self.path.exists():
            self._read()

    def get(self, key: LayerKey) -> dict[str, float] | None:
        entry = self._entries.get(key.text())
        return dict(entry) if entry is not None else None

    def put(self, key: LayerKey, times: dict[str, float]) -> None:
        self._entries[key.text()] = {k: float(v) for k, v in times.items()}

    def __len__(self) -> int:
        return len(self._entries)

    def _read(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the sparsify cache {self.path}: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise ConfigError(f"{self.path} is not a prunekit sparsify cache")
        if data.get("format") != FORMAT or data.get("machine") != machine():
            return  # another machine's (or format's) timings: start afresh
        for k, v in data["entries"].items():
            if isinstance(v, dict) and all(isinstance(t, (int, float)) for t in v.values()):
                self._entries[k] = {n: float(t) for n, t in v.items()}

    def save(self) -> None:
        """Write the cache file atomically (no-op without a path)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "machine": machine(), "entries": self._entries}
        fd, tmp = tempfile.mkstemp(prefix=".sparsify-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


#: the process-wide cache used when sparsify is given none
DEFAULT_CACHE = DecisionCache()
