"""SqueezeBERT's attention: 1x1 convolutions, grouped, in place of linear projections.

``SqueezeBertModule`` computes q, k and v with ``Conv1d`` (kernel 1, ``q_groups``/``k_groups``/
``v_groups`` groups: 4 by default) and feeds the merged heads to ``post_attention.conv1d``
(``post_attention_groups``, 1 by default). A grouped convolution's output channels come in
``groups`` equal blocks, and it stays a convolution of that many groups when every block loses as
many channels (any of them). With each block holding whole heads, the heads come in ``lcm(q_groups,
k_groups, v_groups)`` blocks of consecutive heads that must each lose as many (``Heads.chunks``).
The input channels of a grouped convolution are weight columns shared by every group: removing one
removes the same local channel from every group, a strided tie of heads that head pruning does not
express, so a grouped ``post_attention`` is refused. The adapter serves the layer (the output
projection lives beside the attention module); the counts live on ``attention``.
"""

from __future__ import annotations

import math

from torch import nn

from .heads import HeadAdapter, Heads, _get, hf_example, register

_PROJECTIONS = {"attention.query": "q", "attention.key": "k", "attention.value": "v"}


@register(
    "squeezebert",
    "SqueezeBertModule",
    examples=(  # the default groups (q/k/v 4, post-attention 1); 8 heads: 2 per block
        hf_example(
            "SqueezeBertModel", vocab_size=64, hidden_size=32, embedding_size=32,
            num_hidden_layers=1, num_attention_heads=8, intermediate_size=64,
        ),
    ),
)  # fmt: skip
class SqueezeBertModule(HeadAdapter):
    """SqueezeBERT: grouped 1x1-convolution q/k/v, heads tied in blocks of their groups."""

    q, k, v, o = (*_PROJECTIONS, "post_attention.conv1d")
    holder = "attention"

    def matches(self, module: nn.Module) -> bool:
        return all(isinstance(_get(module, p), nn.Conv1d) for p in (self.q, self.k, self.v, self.o))

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        heads = super().layout(prefix, module)
        heads.chunks = math.lcm(*(_get(module, p).groups for p in _PROJECTIONS))
        return heads

    def unsupported(self, module: nn.Module) -> str | None:
        post = module.post_attention.conv1d.groups
        if post > 1:
            return (
                f"its post-attention convolution is grouped (post_attention_groups={post}): the "
                "input channels of a grouped convolution are weight columns shared by every "
                "group, so head j of one group goes only with head j of every other group, a "
                "strided tie that head pruning does not support (post_attention_groups=1 works)"
            )
        hq = module.attention.num_attention_heads
        for path, name in _PROJECTIONS.items():
            groups = _get(module, path).groups
            if hq % groups:
                return (
                    f"its {hq} heads do not split evenly over the {groups} groups of its "
                    f"{name} convolution ({name}_groups={groups}): a group would hold part of "
                    "a head"
                )
        return None
