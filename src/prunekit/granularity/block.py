"""Blocks: R x C tiles of the ``[out, in]`` matrix fall together."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError, WeightError
from ..targets import Target
from .base import GRANULARITIES, Granularity

_SPEC = re.compile(r"block:(\d+)x(\d+)")


@GRANULARITIES.register("block:RxC")
@dataclass(frozen=True)
class Block(Granularity):
    """R output rows by C input columns per block."""

    examples: ClassVar[tuple[str, ...]] = ("block:4x4", "block:2x8")

    rows: int
    cols: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rows < 1 or self.cols < 1:
            raise ConfigError(f"malformed block spec {self.spec!r}: need block:RxC with R, C >= 1")

    @classmethod
    def from_spec(cls, spec: str) -> Block | None:
        if not spec.startswith("block"):
            return None
        match = _SPEC.fullmatch(spec)
        if not match:
            raise ConfigError(
                f"malformed block spec {spec!r}: expected 'block:RxC', e.g. block:4x4"
            )
        return cls(int(match[1]), int(match[2]))

    @property
    def spec(self) -> str:
        return f"block:{self.rows}x{self.cols}"

    @property
    def unit_size(self) -> int:  # type: ignore[override]
        return self.rows * self.cols

    def check(self, target: Target) -> None:
        out, cols = target.matrix().shape
        if out % self.rows or cols % self.cols:
            raise WeightError(
                f"{target.qualname}: matrix {out}x{cols} is not divisible into "
                f"{self.rows}x{self.cols} blocks; exclude this layer or pick a block that "
                "divides it"
            )

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        out, cols = scores.shape
        tiles = scores.reshape(out // self.rows, self.rows, cols // self.cols, self.cols)
        return tiles.sum(dim=(1, 3))  # [out/R, in/C]

    def expand(self, unit_keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return unit_keep.repeat_interleave(self.rows, 0).repeat_interleave(self.cols, 1)
