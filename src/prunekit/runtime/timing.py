"""Robust timing of a few candidates (dense and each sparse kernel) against each other.

Timings on a shared machine are noisy, so candidates are compared *within one run*: each is warmed
up, then the candidates run in rounds, in a rotating order, and each one's per-call time is the
median over rounds. Decisions take a :class:`Timer`, so tests inject a fake one.

Cache state matters: a 4096x4096 layer at 90% sparsity packs into 10 MB, which stays in a 32 MB
last-level cache when timed alone, while in a real model the other layers evict it between calls.
``flush=True`` reads a buffer twice the size of the last-level cache (untimed) before every
timed call, so each candidate starts cold, as a layer inside a large model does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Protocol

import torch


class Timer(Protocol):
    def __call__(
        self,
        candidates: Mapping[str, Callable[[], object]],
        prepare: Mapping[str, Callable[[], object]] | None = None,
    ) -> dict[str, float]:
        """Median seconds per call of each candidate; ``prepare[name]`` runs untimed before it."""
        ...


@dataclass
class MedianTimer:
    """Warm up, then interleave rounds until ``budget_s`` is spent (within the round limits).

    A candidate whose median after ``min_rounds`` is over ``drop_factor`` times the best one's is
    clearly out of the race; it sits out the remaining rounds, which saves most of the time on
    cells where one kernel is far off (its median still stands for it).
    """

    warmup: int = 2
    min_rounds: int = 5
    max_rounds: int = 31
    budget_s: float = 0.3
    drop_factor: float = 3.0
    flush: bool = False
    #: None: this thread's CPU time when torch runs 1 thread, else wall-clock time
    clock: Callable[[], float] | None = None
    #: every timed call of the last run, by candidate (for min / spread in benchmarks)
    samples: dict[str, list[float]] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, candidates, prepare=None) -> dict[str, float]:
        names = list(candidates)
        prepare = prepare or {}
        flush = _cache_flusher() if self.flush else _noop
        clock = self.clock or default_clock()
        times: dict[str, list[float]] = {n: [] for n in names}
        with torch.inference_mode():
            for n in names:
                prepare.get(n, _noop)()
                for _ in range(self.warmup):
                    candidates[n]()
            start = time.perf_counter()
            racing = list(names)
            for r in range(self.max_rounds):
                for i in range(len(racing)):
                    n = racing[(i + r) % len(racing)]  # rotate the order every round
                    prepare.get(n, _noop)()
                    flush()
                    t0 = clock()
                    candidates[n]()
                    times[n].append(clock() - t0)
                if r + 1 >= self.min_rounds:
                    if time.perf_counter() - start > self.budget_s:
                        break
                    best = min(statistics.median(times[n]) for n in racing)
                    racing = [
                        n for n in racing if statistics.median(times[n]) <= self.drop_factor * best
                    ]
        self.samples = times
        return {n: statistics.median(v) for n, v in times.items()}


def paired_ratios(samples: Mapping[str, list[float]], ref: str, name: str) -> list[float]:
    """``ref``'s time / ``name``'s time in each round both ran (> 1: ``name`` is faster).

    ``samples`` is :attr:`MedianTimer.samples`: entry ``i`` of each list is round ``i`` (a dropped
    candidate's list only stops early), so each ratio compares two calls made a fraction of a
    second apart, and a slow drift in the machine's load cancels out of it.
    """
    return [a / b for a, b in zip(samples[ref], samples[name], strict=False)]


def default_clock() -> Callable[[], float]:
    """The clock that times one call best here.

    At one thread the work runs on the calling thread, so its CPU time (``time.thread_time``) is
    the latency minus the time the OS scheduler gave to other processes: on a shared, loaded
    machine a 20 ms dense call is preempted far more often than a 2 ms sparse one, and wall-clock
    ratios come out inflated. With more threads the work is spread over workers, so wall-clock.
    """
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def _noop() -> None:
    return None


def last_level_cache_bytes(default: int = 32 * 2**20) -> int:
    """The largest CPU cache of this machine (Linux sysfs), else ``default``."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    return max(sizes, default=default)


@cache
def _cache_flusher() -> Callable[[], None]:
    buf = torch.ones(2 * last_level_cache_bytes() // 4, dtype=torch.float32)

    def flush() -> None:
        # reads every line of a buffer twice the cache: evicts what the previous call left
        # behind, with clean lines, as streaming the other layers' weights does
        buf.sum()

    return flush
