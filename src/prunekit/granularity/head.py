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
        if not groups:
            why = (
                f"its attention modules ({', '.join(left[:3])}) have no head adapter and no "
                "scaled_dot_product_attention call or matmul-softmax-matmul chain that structure "
                "can read"
                if left
                else "none has a head adapter or runs attention that structure can read"
            )
            raise TargetError(
                f"{type(model).__name__} has no attention module that prunekit can prune by "
                f"head: {why} (see prunekit.structure.heads.HEAD_ADAPTERS)"
            )
        if left:
            warnings.warn(
                f"prunekit: the heads of {len(left)} attention module(s) stay, no head adapter "
                f"serves them and structure cannot read them: {', '.join(left[:5])}",
                stacklevel=3,
            )
        return groups


def _uncovered_attention(model: nn.Module, groups: list[Any]) -> list[str]:
    """``name (Class)`` of the modules whose class is named ``...Attention`` and holds weights,
    that no head group covers (inside, around or equal to a covered module)."""
    ids = {id(m) for g in groups for m in g.info.get("modules", [g.info.get("module")])}
    covered = {n for n, m in model.named_modules() if id(m) in ids}
    return [
        f"{n} ({type(m).__name__})"
        for n, m in model.named_modules()
        if type(m).__name__.endswith("Attention")
        and any(True for _ in m.parameters())
        and not any(n == c or n.startswith(c + ".") or c.startswith(n + ".") for c in covered)
    ]
