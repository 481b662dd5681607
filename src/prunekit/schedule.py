"""Schedules: how much sparsity at training step t."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from .errors import ConfigError


class Schedule(ABC):
    """Maps a step count to a target sparsity, or None when no pruning is due at that step."""

    @abstractmethod
    def sparsity_at(self, step: int, final: float) -> float | None: ...

    def _check_steps(self, **values: int) -> None:
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{type(self).__name__}.{key} must be an integer >= 0")


@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune to the final sparsity at step ``at`` (the first ``step()`` by default)."""

    at: int = 0

    def __post_init__(self) -> None:
        self._check_steps(at=self.at)

    def sparsity_at(self, step: int, final: float) -> float | None:
        return final if step == self.at else None


@dataclass(frozen=True)
class Iterative(Schedule):
    """``steps`` equal increments of sparsity, one every ``every`` steps from ``start``."""

    steps: int
    every: int = 1
    start: int = 0

    def __post_init__(self) -> None:
        self._check_steps(start=self.start)
        if self.steps < 1 or self.every < 1:
            raise ConfigError("Iterative needs steps >= 1 and every >= 1")

    def sparsity_at(self, step: int, final: float) -> float | None:
        offset = step - self.start
        if offset < 0 or offset % self.every:
            return None
        k = offset // self.every + 1
        return final * k / self.steps if k <= self.steps else None


@dataclass(frozen=True)
class Cubic(Schedule):
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - start) / (end - start))**3.

    Prunes every ``every`` steps from ``start``, and reaches the final sparsity at ``end``.
    """

    start: int
    end: int
    every: int = 1
    initial: float = 0.0

    def __post_init__(self) -> None:
        self._check_steps(start=self.start, end=self.end)
        if self.end <= self.start or self.every < 1:
            raise ConfigError("Cubic needs end > start and every >= 1")
        if not 0.0 <= self.initial < 1.0:
            raise ConfigError("Cubic.initial must be in [0, 1)")

    def sparsity_at(self, step: int, final: float) -> float | None:
        if step < self.start or step > self.end:
            return None
        if step != self.end and (step - self.start) % self.every:
            return None
        progress = (step - self.start) / (self.end - self.start)
        return final + (self.initial - final) * (1.0 - progress) ** 3
