"""Error types. Every user-facing failure raises a subclass of :class:`PrunekitError`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrunekitError(ValueError):
    """Base class of every error prunekit raises for bad input or an unusable model."""


class ConfigError(PrunekitError):
    """A configuration value is out of range or malformed."""


class UnknownChoiceError(ConfigError):
    """A name (criterion, granularity, format, ...) is not registered."""

    def __init__(self, kind: str, name: object, choices: Iterable[str]) -> None:
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        hint = did_you_mean(name, self.choices) if isinstance(name, str) else ""
        super().__init__(f"unknown {kind} {name!r}{hint}; valid choices: {', '.join(self.choices)}")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class TargetError(PrunekitError):
    """The target selection is empty or names a layer that cannot be pruned."""


class WeightError(PrunekitError):
    """A weight holds NaN or inf, or does not fit the requested granularity."""


class CheckpointError(PrunekitError):
    """A checkpoint is missing, truncated, corrupt or tampered with."""


class VerificationError(PrunekitError):
    """A transformed model does not reproduce the outputs it must reproduce."""


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a float in [0, 1), or raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    return value
