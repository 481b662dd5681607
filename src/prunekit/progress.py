"""Progress bars for long work (rich), off unless asked for, and never in non-terminal output."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track as _rich_track

T = TypeVar("T")


def track(
    items: Iterable[T], description: str, enabled: bool, total: int | None = None
) -> Iterator[T]:
    """Iterate ``items``, showing a progress bar on stderr's terminal when ``enabled``.

    Output that is not a terminal (a log, a pipe) gets no bar, so no blank lines either."""
    console = Console(stderr=True) if enabled else None
    if console is None or not console.is_terminal:
        yield from items
        return
    yield from _rich_track(
        items, description=description, total=total, transient=True, console=console
    )
