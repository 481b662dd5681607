"""Values computed from a tensor, remembered until the tensor is written in place."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.weak import WeakIdKeyDictionary


def version_of(t: torch.Tensor) -> int | None:
    """``t``'s version counter (every in-place write moves it, through any view); None for an
    inference tensor, which keeps none."""
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


class TensorMemo:
    """tensor (by identity, held weakly) -> a dict of values derived from its contents, valid
    while the tensor's version counter stays where it was when they were stored. (A write
    through ``.data`` or NumPy moves no counter: callers that must not trust a stale value
    check what they derive.)"""

    def __init__(self) -> None:
        self._known: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def get(self, t: torch.Tensor) -> dict[Any, Any]:
        """The values stored for ``t`` as it is now (empty if none or stale)."""
        found = self._known.get(t)
        version = version_of(t)
        return found[1] if found is not None and version is not None and found[0] == version else {}

    def values(self, t: torch.Tensor) -> dict[Any, Any]:
        """The dict to store values for ``t`` as it is now in (stale ones dropped); a throwaway
        dict for a tensor without a version counter."""
        version = version_of(t)
        if version is None:
            return {}
        found = self._known.get(t)
        if found is None or found[0] != version:
            found = self._known[t] = (version, {})
        return found[1]
