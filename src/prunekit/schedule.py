"""Schedules: how much sparsity at training step t. Each is a registered, frozen value object."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from .errors import ConfigError
from .plugin import Plugin
from .registry import Registry

SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


class Schedule(Plugin, ABC):
    """Maps a step count to a target sparsity, or None when no pruning is due at that step.

    The targets a schedule gives never decrease, so masks only shrink.
    """

    @abstractmethod
    def sparsity_at(self, step: int, final: float) -> float | None: ...

    def _check_steps(self, **values: int) -> None:
        for key, value in values.items():
            if value < 0:
                raise ConfigError(f"{type(self).__name__}.{key} must be an integer >= 0")


@SCHEDULES.register("oneshot")
@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune to the final sparsity at step ``at`` (the first ``step()`` by default)."""

    examples: ClassVar[tuple] = ("oneshot", {"type": "oneshot", "at": 3})

    at: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_steps(at=self.at)

    def sparsity_at(self, step: int, final: float) -> float | None:
        return final if step == self.at else None


@SCHEDULES.register("iterative")
@dataclass(frozen=True)
class Iterative(Schedule):
    """``steps`` equal increments of sparsity, one every ``every`` steps from ``start``."""

    examples: ClassVar[tuple] = (
        {"type": "iterative", "steps": 3},
        {"type": "iterative", "steps": 4, "every": 5, "start": 2},
    )

    steps: int
    every: int = 1
    start: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_steps(start=self.start)
        if self.steps < 1 or self.every < 1:
            raise ConfigError("Iterative needs steps >= 1 and every >= 1")

    def sparsity_at(self, step: int, final: float) -> float | None:
        offset = step - self.start
        if offset < 0 or offset % self.every:
            return None
        k = offset // self.every + 1
        return final * k / self.steps if k <= self.steps else None


@SCHEDULES.register("cubic")
@dataclass(frozen=True)
class Cubic(Schedule):
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - start) / (end - start))**3.

    Prunes every ``every`` steps from ``start``, and reaches the final sparsity at ``end``.
    """

    examples: ClassVar[tuple] = (
        {"type": "cubic", "start": 0, "end": 10},
        {"type": "cubic", "start": 2, "end": 20, "every": 3, "initial": 0.1},
    )

    start: int
    end: int
    every: int = 1
    initial: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
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
