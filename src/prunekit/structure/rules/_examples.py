"""Tiny models for the rules' examples (run by the contract tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class Fn(nn.Module):
    """A module whose forward is ``fn`` (for examples of functional ops)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def randn(*shape: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def mlp_around(fn: Callable[[torch.Tensor], torch.Tensor], width: int = 16) -> nn.Module:
    """Linear(8, width) -> fn -> Linear(width, 4): ``fn`` sees prunable channels."""
    return nn.Sequential(nn.Linear(8, width), Fn(fn), nn.Linear(width, 4))


def cnn_around(
    fn: Callable[[torch.Tensor], torch.Tensor], out: nn.Module | None = None
) -> nn.Module:
    """Conv(3, 16) -> fn -> ``out`` (default a 1x1 conv to 4 channels)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3), Fn(fn), out or nn.Conv2d(16, 4, 1))


VEC = randn(3, 8)
IMAGE = randn(2, 3, 8, 8)


def tokens(vocab: int = 10, shape: tuple[int, ...] = (2, 5)) -> Callable[[], torch.Tensor]:
    return lambda: torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))
