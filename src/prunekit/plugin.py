"""Plugins as frozen, parameterised value objects, with a string shorthand and a lossless dict.

Every plugin kind (criterion, granularity, allocation, schedule, ...) is a registry of frozen
dataclasses. One plugin value is written three ways, all equal:

* the object: ``SparseGPT(damp=0.05)``;
* a string shorthand: ``"sparsegpt"`` (the registered name, all parameters at their defaults;
  granularities also parse specs such as ``"2:4"``);
* a dict, which is also its serialised form: ``{"type": "sparsegpt", "damp": 0.05}``.

:func:`to_dict` writes only the registered name and the dataclass fields, and :func:`from_value`
only looks names up in the registry (the allow-list): nothing is imported from a recipe. Field
values are checked against their annotations by :meth:`Plugin.__post_init__`, so a wrong type
raises a :class:`~prunekit.errors.ConfigError` when the object is built, never later.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ConfigError, did_you_mean
from .registry import Registry

P = TypeVar("P", bound="Plugin")


class Plugin:
    """Base of plugin value objects. Subclasses are ``@dataclass(frozen=True)``.

    ``__post_init__`` checks every field against its annotation (``int``, ``float``, ``bool``,
    ``str``, ``X | None``, ``tuple[...]``, ``Literal[...]``); subclasses that define their own
    ``__post_init__`` call ``super().__post_init__()`` first.
    """

    def __post_init__(self) -> None:
        check_fields(self)

    def params(self) -> dict[str, Any]:
        """The dataclass fields and their values (all of them, defaults included)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


def check_fields(obj: Any) -> None:
    """Raise :class:`ConfigError` if a dataclass field's value does not fit its annotation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _fits(value, hints.get(f.name, Any)):
            raise ConfigError(
                f"{type(obj).__name__}.{f.name} must be {_describe(hints[f.name])}, got {value!r}"
            )


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(args) == len(value) and all(
            _fits(v, h) for v, h in zip(value, args, strict=True)
        )
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if hint is float:
        return "a finite number"
    if hint is int:
        return "an integer"
    return getattr(hint, "__name__", str(hint))


def to_dict(plugin: Plugin, registry: Registry[Any]) -> dict[str, Any]:
    """``{"type": <registered name>, **fields}``: JSON-ready (tuples become lists)."""
    out: dict[str, Any] = {"type": registry.name_of(type(plugin))}
    for key, value in plugin.params().items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def from_value(
    value: Any,
    registry: Registry[Any],
    base: type[P],
    parse: Callable[[str], P | None] | None = None,
) -> P:
    """A plugin of kind ``base`` from an instance, a string shorthand or a dict.

    ``parse`` may turn a string into a plugin first (granularity specs such as ``"2:4"``);
    otherwise a string is a registered name, built with its defaults.
    """
    if isinstance(value, base):
        return value
    if isinstance(value, str):
        if parse is not None:
            parsed = parse(value)
            if parsed is not None:
                return parsed
        return _build(registry, value, {})
    if isinstance(value, dict):
        params = dict(value)
        name = params.pop("type", None)
        if not isinstance(name, str):
            raise ConfigError(
                f"a {registry.kind} given as a dict needs a 'type' key naming one of: "
                f"{', '.join(registry.names())}; got {value!r}"
            )
        return _build(registry, name, params)
    raise ConfigError(
        f"{registry.kind} must be a name ({', '.join(registry.names())}), a dict with a 'type' "
        f"key, or a {base.__name__} object; got {value!r}"
    )


def _build(registry: Registry[Any], name: str, params: dict[str, Any]) -> Any:
    cls = registry.get(name)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(
            f"{registry.kind} {name!r} has no parameter {', '.join(map(repr, unknown))}"
            f"{did_you_mean(unknown[0], fields)}; valid parameters: "
            f"{', '.join(sorted(fields)) or '-'}"
        )
    hints = typing.get_type_hints(cls)
    for key, v in params.items():  # JSON has lists where the fields hold tuples
        if isinstance(v, list) and typing.get_origin(hints.get(key)) in (tuple, None):
            params[key] = tuple(v)
    try:
        return cls(**params)
    except TypeError as e:  # a required parameter is missing
        raise ConfigError(f"{registry.kind} {name!r}: {e}") from None
