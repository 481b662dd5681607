"""Channels: every coupled channel group (conv filters, linear neurons, MLP intermediates,
residual-stream channels) found by tracing the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from .base import GRANULARITIES
from .structured import Structured


@GRANULARITIES.register("channel")
@dataclass(frozen=True)
class Channel(Structured):
    """Coupled channels. ``Channel(round_to=8, max_ratio=0.8, uniform=True)`` for options."""

    examples: ClassVar[tuple] = (
        "channel",
        {"type": "channel", "round_to": 2, "max_ratio": 0.9},
        {"type": "channel", "uniform": True},
    )

    round_to: int = 1
    max_ratio: float = 1.0
    uniform: bool = False

    @classmethod
    def from_spec(cls, spec: str) -> Channel | None:
        return cls() if spec in ("channel", "filter", "neuron") else None

    @property
    def spec(self) -> str:
        return "channel"

    def groups(self, model: nn.Module, example_inputs: Any) -> list[Any]:
        from ..structure.groups import channel_groups
        from ..structure.hf_config import mark_hidden_width

        groups = channel_groups(model, example_inputs).groups
        mark_hidden_width(model, groups)
        return groups
