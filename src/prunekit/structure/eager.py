"""Head adapters for eager attention (matmul, softmax, matmul in Python: no sdpa call for
structure to read) whose heads are plain blocks of their projections, plus per-head extras.

* OpenAI GPT: GPT-2's fused ``c_attn`` Conv1D, counts in ``n_head``/``split_size``;
* wav2vec2-Conformer with relative positions: ``linear_pos`` rows and the per-head biases
  ``pos_bias_u``/``pos_bias_v`` ``[heads, d]``;
* Nystromformer: the depthwise conv over each head's values (``conv``, one channel per head);
* Perceiver: query/key heads and value heads of different sizes (``qk_channels``, ``v_channels``);
* CvT: heads after the convolutional projections, their size ``embed_dim // num_heads``.
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import (
    BertAttention,
    GPT2Attention,
    HeadAdapter,
    Heads,
    _slot,
    hf_example,
    register,
)
from .propagate import Example

_TEXT = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
         "intermediate_size": 64}  # fmt: skip


@register(
    "openai-gpt",
    "Attention",
    examples=(
        hf_example("OpenAIGPTModel", vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=16),
    ),
)
class OpenAIGPTAttention(GPT2Attention):
    """OpenAI GPT (its class is named ``Attention``; served only with ``c_attn``/``c_proj``/
    ``n_head``): the head size is ``split_size // n_head``."""

    def matches(self, module: nn.Module) -> bool:
        return super().matches(module) and isinstance(getattr(module, "n_head", None), int)

    def head_dim(self, module: nn.Module) -> int:
        return module.split_size // module.n_head

    def resize(self, module: nn.Module) -> None:
        d = self.head_dim(module)
        module.split_size = module.c_attn.weight.shape[1] // 3
        module.n_head = module.split_size // d


_AUDIO = {"vocab_size": 16, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
          "intermediate_size": 64, "conv_dim": (16, 16), "conv_stride": (5, 2),
          "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16,
          "num_conv_pos_embedding_groups": 4, "conv_depthwise_kernel_size": 3,
          "position_embeddings_type": "relative"}  # fmt: skip


def _audio_example(model: str, **cfg: object) -> Example:
    """``hf_example`` on a waveform ``[2, 400]``."""
    return Example(
        hf_example(model, **cfg).build,
        lambda: torch.randn(2, 400, generator=torch.Generator().manual_seed(0)),
    )


@register(
    "conformer",
    "Wav2Vec2ConformerSelfAttention",
    examples=(_audio_example("Wav2Vec2ConformerModel", **_AUDIO),),
)
class ConformerAttention(HeadAdapter):
    """wav2vec2-Conformer: ``linear_q``/``k``/``v``/``out``; with relative positions the rows of
    ``linear_pos`` and the per-head biases added to the queries."""

    q, k, v, o = "linear_q", "linear_k", "linear_v", "linear_out"
    per_head = (("", "pos_bias_u", 0), ("", "pos_bias_v", 0))

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        heads = super().layout(prefix, module)
        pos = _slot(prefix, module, "linear_pos", "weight", 0)
        if pos is not None:
            heads.q.append((pos, 0))
        return heads


@register(
    "nystromformer",
    "NystromformerAttention",
    examples=(
        hf_example(
            "NystromformerModel", **_TEXT, num_landmarks=4, segment_means_seq_len=8,
            max_position_embeddings=16,
        ),
    ),
)  # fmt: skip
class NystromformerAttention(BertAttention):
    """Nystromformer: BERT's layout plus a depthwise conv with one channel per head."""

    per_head = (("self.conv", "weight", 0),)


@register(
    "perceiver",
    "PerceiverAttention",
    examples=(
        hf_example(
            "PerceiverForMaskedLM", vocab_size=64, max_position_embeddings=16, d_model=32,
            d_latents=32, num_latents=8, num_blocks=1, num_self_attends_per_block=1,
            num_self_attention_heads=4, num_cross_attention_heads=2, qk_channels=16,
            v_channels=32,
        ),
    ),
)  # fmt: skip
class PerceiverAttention(BertAttention):
    """Perceiver: query/key heads of ``qk_channels_per_head`` rows, value heads (and output
    columns) of ``v_channels_per_head``."""

    def head_dim(self, module: nn.Module) -> int:
        return module.self.qk_channels_per_head

    def layout(self, prefix: str, module: nn.Module) -> Heads:
        attn = module.self
        dq, dv = attn.qk_channels_per_head, attn.v_channels_per_head
        h = attn.value.weight.shape[0] // dv
        heads = Heads(h, h, dq)
        rows_q = torch.arange(h * dq).view(h, dq)
        rows_v = torch.arange(h * dv).view(h, dv)
        for path, rows, into in (
            ("self.query", rows_q, heads.q_index),
            ("self.key", rows_q, heads.kv_index),
            ("self.value", rows_v, heads.kv_index),
        ):
            for attr in ("weight", "bias"):
                s = _slot(prefix, module, path, attr, 0)
                if s is not None:
                    into.append((s, rows))
        heads.q_index.append((_slot(prefix, module, "output.dense", "weight", 1), rows_v))
        return heads

    def resize(self, module: nn.Module) -> None:
        attn = module.self
        attn.num_heads = attn.value.weight.shape[0] // attn.v_channels_per_head
        attn.qk_channels = attn.num_heads * attn.qk_channels_per_head
        attn.v_channels = attn.num_heads * attn.v_channels_per_head


@register(
    "cvt",
    "CvtAttention",
    examples=(
        hf_example(
            "CvtModel", "image", embed_dim=[16], num_heads=[2], depth=[1], patch_sizes=[7],
            patch_stride=[4], patch_padding=[2], mlp_ratio=[2.0], attention_drop_rate=[0.0],
            drop_rate=[0.0], drop_path_rate=[0.0], qkv_bias=[True], cls_token=[True],
            qkv_projection_method=["dw_bn"], kernel_qkv=[3], padding_kv=[1], stride_kv=[2],
            padding_q=[1], stride_q=[1],
        ),
    ),
)  # fmt: skip
class CvtAttention(HeadAdapter):
    """CvT: the linear q/k/v projections after the convolutional ones (which run on the input
    width and stay), ``output.dense``; the head size is ``embed_dim // num_heads``, so both
    counts follow the heads."""

    q, k, v = "attention.projection_query", "attention.projection_key", "attention.projection_value"
    o = "output.dense"
    holder = "attention"

    def head_dim(self, module: nn.Module) -> int:
        return module.attention.embed_dim // module.attention.num_heads

    def resize(self, module: nn.Module) -> None:
        attn, d = module.attention, self.head_dim(module)
        attn.embed_dim = attn.projection_query.weight.shape[0]
        attn.num_heads = attn.embed_dim // d
