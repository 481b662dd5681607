"""Plugin registries. A plugin is one module that registers itself on import.

Each plugin package (``criteria``, ``granularity``, ...) imports every module inside it with
:func:`import_submodules`, so adding a plugin touches only its own file.

Every :class:`Registry` lists itself in :data:`REGISTRIES`, and every entry carries examples
(``examples=`` at registration, or the entry's own ``examples`` attribute): the contract tests
enumerate every registry and feed each entry its examples, so a new plugin is covered the moment it
exists, and a plugin without examples fails the meta-test.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from .errors import UnknownChoiceError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory mapping for one plugin kind, e.g. ``Registry("criterion")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._examples: dict[str, tuple[Any, ...]] = {}
        REGISTRIES.append(self)

    def register(self, name: str, *, examples: Iterable[Any] | None = None) -> Callable[[T], T]:
        """Decorator: ``@CRITERIA.register("magnitude")`` on a class or factory.

        ``examples`` (else the entry's ``examples`` attribute) are what the contract tests run.
        A name registered twice raises.
        """

        def add(obj: T) -> T:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            self._examples[name] = tuple(
                examples if examples is not None else getattr(obj, "examples", ())
            )
            return obj

        return add

    def examples(self, name: str) -> tuple[Any, ...]:
        """The examples registered with ``name`` (empty when it brought none)."""
        self.get(name)
        return self._examples[name]

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name raises with the valid choices."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownChoiceError(self.kind, name, self._entries) from None

    def name_of(self, obj: object) -> str:
        """The name ``obj`` (an entry, or an instance's class) is registered under."""
        for name, entry in self._entries.items():
            if entry is obj:
                return name
        raise KeyError(f"{obj!r} is not a registered {self.kind}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


#: every registry, in creation order (the contract tests enumerate it)
REGISTRIES: list[Registry[Any]] = []


def import_submodules(package_name: str, package_path: list[str]) -> None:
    """Import every module of a plugin package so that each registers itself."""
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
