"""Robust wall-clock comparison of a few candidates (dense and each sparse kernel).

Timings on a shared machine are noisy, so candidates are compared *within one run*: each is warmed
up, then the candidates run in rounds, in a rotating order, and each one's per-call time is the
median over rounds. Decisions take a :class:`Timer`, so tests inject a fake one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
    clock: Callable[[], float] = time.perf_counter

    def __call__(self, candidates, prepare=None) -> dict[str, float]:
        names = list(candidates)
        prepare = prepare or {}
        times: dict[str, list[float]] = {n: [] for n in names}
        with torch.inference_mode():
            for n in names:
                prepare.get(n, _noop)()
                for _ in range(self.warmup):
                    candidates[n]()
            start = self.clock()
            racing = list(names)
            for r in range(self.max_rounds):
                for i in range(len(racing)):
                    n = racing[(i + r) % len(racing)]  # rotate the order every round
                    prepare.get(n, _noop)()
                    t0 = self.clock()
                    candidates[n]()
                    times[n].append(self.clock() - t0)
                if r + 1 >= self.min_rounds:
                    if self.clock() - start > self.budget_s:
                        break
                    best = min(statistics.median(times[n]) for n in racing)
                    racing = [
                        n for n in racing if statistics.median(times[n]) <= self.drop_factor * best
                    ]
        return {n: statistics.median(v) for n, v in times.items()}


def _noop() -> None:
    return None
