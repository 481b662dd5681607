"""PruneConfig: what to prune, how, and when. Validated before the model is touched."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .allocation import Allocation, get_allocation
from .criteria import CRITERIA, Criterion
from .errors import ConfigError, check_fraction
from .granularity import Granularity, parse_granularity
from .schedule import Cubic, Iterative, OneShot, Schedule
from .targets import Selector

_SCHEDULES: dict[str, type[Schedule]] = {c.__name__: c for c in (OneShot, Iterative, Cubic)}


@dataclass(frozen=True)
class Resolved:
    """A validated config: parsed plugins and the final sparsity."""

    sparsity: float
    granularity: Granularity
    criterion: Criterion
    allocation: Allocation


@dataclass
class PruneConfig:
    """Settings of one pruning job.

    ``sparsity`` may be omitted for N:M (it is then ``1 - N/M``); if given it must equal that.
    ``scope`` is ``"layer"`` or ``"global"``. ``include``/``exclude`` take names, regexes or types.
    """

    sparsity: float | None = None
    granularity: str | Granularity = "unstructured"
    criterion: str = "magnitude"
    scope: str = "layer"
    schedule: Schedule = field(default_factory=OneShot)
    include: Sequence[Selector] | Selector | None = None
    exclude: Sequence[Selector] | Selector | None = None
    seed: int = 0

    def resolve(self) -> Resolved:
        """Validate every field; raise a :class:`ConfigError` naming the problem."""
        gran = parse_granularity(self.granularity)
        criterion = CRITERIA.get(self.criterion)()
        allocation = get_allocation(self.scope)
        allocation.check(gran)
        if not isinstance(self.schedule, Schedule):
            raise ConfigError(
                f"schedule must be one of {', '.join(_SCHEDULES)}, got {self.schedule!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        fixed = gran.fixed_sparsity
        if fixed is None:
            if self.sparsity is None:
                raise ConfigError(f"sparsity is required for granularity {gran.spec!r}")
            sparsity = check_fraction("sparsity", self.sparsity)
        elif self.sparsity is None:
            sparsity = fixed
        else:
            check_fraction("sparsity", self.sparsity)
            if abs(float(self.sparsity) - fixed) > 1e-9:
                raise ConfigError(
                    f"sparsity {self.sparsity} contradicts {gran.spec}, which fixes it at "
                    f"{fixed:g}; omit sparsity or pass {fixed:g}"
                )
            sparsity = fixed
        return Resolved(sparsity, gran, criterion, allocation)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (module types in include/exclude are written by class name)."""

        def sel(value: Any) -> Any:
            if value is None or isinstance(value, str):
                return value
            if isinstance(value, type):
                return value.__name__
            return [sel(v) for v in value]

        schedule = {"type": type(self.schedule).__name__, **dataclasses.asdict(self.schedule)}
        return {
            "sparsity": self.sparsity,
            "granularity": str(self.granularity),
            "criterion": self.criterion,
            "scope": self.scope,
            "schedule": schedule,
            "include": sel(self.include),
            "exclude": sel(self.exclude),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        """The inverse of :meth:`to_dict`, for JSON or YAML recipes (names and regexes only)."""
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}")
        schedule = data.pop("schedule", None)
        if isinstance(schedule, dict):
            kind = dict(schedule).pop("type", "OneShot")
            if kind not in _SCHEDULES:
                raise ConfigError(
                    f"unknown schedule {kind!r}; valid choices: {', '.join(_SCHEDULES)}"
                )
            args = {k: v for k, v in schedule.items() if k != "type"}
            data["schedule"] = _SCHEDULES[kind](**args)
        return cls(**data)
