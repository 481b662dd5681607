"""Structured pruning: trace the model, group coupled channels and heads, shrink physically.

* :mod:`.graph` records one real forward pass on ``example_inputs`` (torch-function level).
* :mod:`.propagate` runs the channel rules over the trace; :mod:`.rules` holds them, one module
  per op family, registered in ``RULES`` with the op names they handle. An op without a rule keeps
  the channels it touches, with a warning naming the op and module.
* :mod:`.groups` turns linked channels into :class:`Group` objects (slices removed together).
* :mod:`.heads` does the same for attention heads, through one adapter per attention layout
  (``HEAD_ADAPTERS``; :mod:`.mha` and :mod:`.bloom` hold the adapters that bring module code);
  :mod:`.resize` updates size attributes (``RESIZERS``).
* :mod:`.select` scores units with a criterion (``Criterion.group_scores`` /
  ``Criterion.channel_scores`` hooks, else summed element scores) and masks the pruned ones.
* :mod:`.shrink` removes them, updates module attributes (:mod:`.resize`) and Hugging Face
  configs (:mod:`.hf_config`), and verifies the result against the masked model.
"""

# register the masked LayerNorm, the rules, and the head adapters with module code of their own
from . import (  # noqa: F401
    bloom,
    convbert,
    deberta,
    eager,
    funnel,
    led,
    levit,
    longformer,
    masked_norm,
    mha,
    prophetnet,
    prophetnet_ngram,
    pvt_v2,
    reformer,
    rules,
    squeezebert,
    wavlm,
    xlnet,
)
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
