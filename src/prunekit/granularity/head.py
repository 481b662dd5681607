"""Attention heads: q/k/v/o sliced consistently, GQA query heads removed evenly per KV group."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..errors import TargetError
from .base import GRANULARITIES
from .structured import Structured


@GRANULARITIES.register("head")
@dataclass(frozen=True)
class Head(Structured):
    """Attention heads. With GQA, query heads go evenly per KV group; ``kv_groups=True`` removes
    whole KV groups (with their query heads) instead."""

    examples: ClassVar[tuple] = ("head", {"type": "head", "kv_groups": True, "uniform": True})

    round_to: int = 1
    max_ratio: float = 1.0
    uniform: bool = False
    kv_groups: bool = False

    @classmethod
    def from_spec(cls, spec: str) -> Head | None:
        return cls() if spec in ("head", "heads") else None

    @property
    def spec(self) -> str:
        return "head"

    def groups(self, model: nn.Module, example_inputs: Any) -> list[Any]:
        from ..structure.heads import head_groups

        groups = head_groups(
            model, kv_groups=self.kv_groups, example_inputs=example_inputs, refuse=True
        )
        left = _uncovered_attention(model, groups)
        refused = [e for e in left if e[2]]  # known to refuse: named first, with the reason
        listed = _named(refused + [e for e in left if not e[2]])
        sep = "; " if refused else ", "  # reasons hold commas
        if not groups:
            plain = (
                "no head adapter and no scaled_dot_product_attention call that structure can read"
            )
            if not left:
                why = "none has a head adapter or calls scaled_dot_product_attention"
            elif refused:
                others = len(refused) < len(left)
                why = "; ".join(listed[:3]) + (f"; the others have {plain}" if others else "")
            else:
                why = f"its attention modules ({', '.join(listed[:3])}) have {plain}"
            raise TargetError(
                f"{type(model).__name__} has no attention module that prunekit can prune by "
                f"head: {why} (see prunekit.structure.heads.HEAD_ADAPTERS)"
            )
        if left:
            warnings.warn(
                f"prunekit: the heads of {len(left)} attention module(s) stay, no head adapter "
                f"serves them and structure cannot read them: {sep.join(listed[:5])}",
                stacklevel=3,
            )
        return groups


def _uncovered_attention(model: nn.Module, groups: list[Any]) -> list[tuple[str, str, str | None]]:
    """Modules whose class is named ``...Attention`` and holds weights, that no head group
    covers (inside, around or equal to a covered module): (name, class, why its class refuses
    or None)."""
    from ..structure.heads import refusal

    ids = {id(m) for g in groups for m in g.info.get("modules", [g.info.get("module")])}
    covered = {n for n, m in model.named_modules() if id(m) in ids}
    return [
        (n, type(m).__name__, refusal(m))
        for n, m in model.named_modules()
        if type(m).__name__.endswith("Attention")
        and any(True for _ in m.parameters())
        and not any(n == c or n.startswith(c + ".") or c.startswith(n + ".") for c in covered)
    ]


def _named(entries: list[tuple[str, str, str | None]]) -> list[str]:
    """``name (Class)``; the first module of a class that refuses also says why."""
    told: set[str] = set()
    out = []
    for name, cls, why in entries:
        out.append(f"{name} ({cls}: {why})" if why and cls not in told else f"{name} ({cls})")
        told.add(cls)
    return out
