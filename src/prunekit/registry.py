"""Plugin registries. A plugin is one module that registers itself on import.

Each plugin package (``criteria``, ``granularity``, ...) imports every module inside it with
:func:`import_submodules`, so adding a plugin touches only its own file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UnknownChoiceError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory mapping for one plugin kind, e.g. ``Registry("criterion")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@CRITERIA.register("magnitude")`` on a class or factory."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name raises with the valid choices."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownChoiceError(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_submodules(package_name: str, package_path: list[str]) -> None:
    """Import every module of a plugin package so that each registers itself."""
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
