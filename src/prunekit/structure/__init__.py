"""Structured pruning: trace the model, group coupled channels and heads, shrink physically."""

from .graph import Graph, trace
from .groups import ChannelAnalysis, Group, Slot, channel_groups
from .heads import HEAD_ADAPTERS, HeadAdapter, head_groups
from .shrink import shrink

__all__ = [
    "HEAD_ADAPTERS",
    "ChannelAnalysis",
    "Graph",
    "Group",
    "HeadAdapter",
    "Slot",
    "channel_groups",
    "head_groups",
    "shrink",
    "trace",
]
