"""LeViT's attention: heads found by structure, plus what structure cannot tell.

``LevitAttention`` computes q, k and v with one BN-linear whose rows are laid out per head
(``[q | k | v]`` of every head, values ``attention_ratio`` times wider than keys), adds per-head
attention biases gathered from ``attention_biases`` ``[heads, offsets]``, and merges the heads into
``out_dim_projection`` channels; ``LevitAttentionSubsample`` takes its queries from a subsampled
input. Structure reads all of that from the trace (values of their own head size included). What
it cannot tell: in eval mode the module caches the gathered biases per device
(``attention_bias_cache``), which would keep the old heads, and ``out_dim_projection`` counts value
channels. The adapter drops the cache before the trace (a cached bias reaches the scores from no
parameter) and after slicing, and sets the width (also on a module that a checkpoint's shapes
just resized).
"""

from __future__ import annotations

from torch import nn

from .heads import HeadAdapter, hf_example, register


@register(
    "levit",
    "LevitAttention",
    "LevitAttentionSubsample",
    examples=(
        hf_example(
            "LevitModel", "image", image_size=32, hidden_sizes=[32, 48],
            num_attention_heads=[2, 4], depths=[1, 1], key_dim=[8, 8], mlp_ratio=[2, 2],
            attention_ratio=[2, 2], patch_size=16, down_ops=[["Subsample", 8, 4, 4, 2, 2]],
        ),
    ),
)  # fmt: skip
class LevitAttention(HeadAdapter):
    """Heads by structure; drops the bias cache and sets ``out_dim_projection`` after slicing."""

    structural = True

    def matches(self, module: nn.Module) -> bool:
        return hasattr(module, "attention_biases")

    def before_trace(self, module: nn.Module) -> None:
        module.attention_bias_cache = {}  # a cached bias would reach the scores from nowhere

    def resize(self, module: nn.Module) -> None:
        module.attention_bias_cache = {}

    def reattach(self, module: nn.Module) -> None:
        module.out_dim_projection = module.projection.linear.weight.shape[1]
