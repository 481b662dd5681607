"""The structured-pruning zoo: tiny models with random weights, and example inputs for each.

Every factory is deterministic (seeded) so a fresh process can rebuild the same original model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

ZOO: dict[str, Callable[[], nn.Module]] = {}
INPUTS: dict[str, Callable[[], Any]] = {}
#: models with attention heads prunekit can remove
ATTENTION: set[str] = set()


def zoo(name: str, inputs: Callable[[], Any], attention: bool = False):
    def add(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            torch.manual_seed(0)
            model = fn().eval()
            _randomize_norm_stats(model)
            return model

        ZOO[name] = build
        INPUTS[name] = inputs
        if attention:
            ATTENTION.add(name)
        return build

    return add


def _randomize_norm_stats(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def image(size: int = 32) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))


def tokens(vocab: int = 64, length: int = 8, **extra: Any) -> Callable[[], dict]:
    def make() -> dict:
        g = torch.Generator().manual_seed(2)
        return {"input_ids": torch.randint(0, vocab, (2, length), generator=g), **extra}

    return make


# -- plain torch --------------------------------------------------------------------------------
class ResidualConcatCNN(nn.Module):
    """Residual adds, a concat of two branches, a depthwise conv and a flatten into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 16, 3, padding=1),
            nn.BatchNorm2d(16),
        )
        self.left = nn.Conv2d(16, 24, 1)
        self.right = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU())
        self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(48 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = self.pool(torch.relu(self.dw(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


@zoo("cnn", image(16))
def cnn() -> nn.Module:
    return ResidualConcatCNN()


@zoo("mlp", lambda: torch.randn(4, 20, generator=torch.Generator().manual_seed(2)))
def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 5)
    )


class MHABlock(nn.Module):
    """A transformer block on ``nn.MultiheadAttention`` with a feed-forward network."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(12, dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, dim))
        self.out = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.ff(self.norm(h))
        return self.out(h)


@zoo("mha", lambda: torch.randn(2, 6, 12, generator=torch.Generator().manual_seed(2)))
def mha() -> nn.Module:
    return MHABlock()


# -- Hugging Face vision ---------------------------------------------------------------------------
@zoo("resnet", image())
def resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 48, 64],
        depths=[1, 1, 1, 1],
        layer_type="bottleneck",
        num_labels=5,
    )
    return ResNetForImageClassification(cfg)


@zoo("convnext", image())
def convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    cfg = ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=5)
    return ConvNextForImageClassification(cfg)


@zoo("mobilenet_v2", image())
def mobilenet_v2() -> nn.Module:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    cfg = MobileNetV2Config(depth_multiplier=0.25, image_size=32, num_labels=5)
    return MobileNetV2ForImageClassification(cfg)


@zoo("efficientnet", image())
def efficientnet() -> nn.Module:
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    cfg = EfficientNetConfig(
        width_coefficient=0.25, depth_coefficient=0.2, image_size=32, hidden_dim=320, num_labels=5
    )
    return EfficientNetForImageClassification(cfg)


@zoo("regnet", image())
def regnet() -> nn.Module:
    from transformers import RegNetConfig, RegNetForImageClassification

    cfg = RegNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, num_labels=5
    )
    return RegNetForImageClassification(cfg)


@zoo("vit", image(), attention=True)
def vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    return ViTForImageClassification(cfg)


@zoo("swin", image(), attention=True)
def swin() -> nn.Module:
    from transformers import SwinConfig, SwinForImageClassification

    cfg = SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 4],
        window_size=4,
        mlp_ratio=4.0,
        num_labels=5,
    )
    return SwinForImageClassification(cfg)


# -- Hugging Face text -----------------------------------------------------------------------------
@zoo("bert", tokens(), attention=True)
def bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=16,
        type_vocab_size=2,
    )
    return BertModel(cfg)  # with its pooler


@zoo("gpt2", tokens(), attention=True)
def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=16)
    return GPT2LMHeadModel(cfg)


@zoo("llama", tokens(use_cache=True), attention=True)
def llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    return LlamaForCausalLM(cfg)


@zoo("mistral", tokens(use_cache=True), attention=True)
def mistral() -> nn.Module:
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        sliding_window=4,
    )
    return MistralForCausalLM(cfg)


@zoo("qwen2", tokens(use_cache=True), attention=True)
def qwen2() -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    return Qwen2ForCausalLM(cfg)


@zoo("opt", tokens(), attention=True)
def opt() -> nn.Module:
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(
        vocab_size=64,
        hidden_size=32,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        word_embed_proj_dim=32,
    )
    return OPTForCausalLM(cfg)


def _t5_inputs() -> dict:
    g = torch.Generator().manual_seed(2)
    return {
        "input_ids": torch.randint(0, 64, (2, 8), generator=g),
        "decoder_input_ids": torch.randint(0, 64, (2, 5), generator=g),
    }


@zoo("t5", _t5_inputs, attention=True)
def t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(cfg)
