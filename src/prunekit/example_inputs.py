"""Example inputs for the command line: built from flags, recorded in ``prunekit.json`` by
``prunekit prune``, and rebuilt by ``bench``, ``eval`` and ``export`` so that every command runs
the model on the inputs it was pruned (and traced) with.

A spec is JSON: ``{"kind": "tensor", "shape": [1, 64], "dtype": "float32"}`` (random normal),
an integer tensor adds ``"low"``/``"high"`` (uniform ids), a constant one ``"fill"``; ``"dict"``
and ``"tuple"`` specs hold ``"items"``. Rebuilding draws from a seeded generator, so it is
deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .outputs import flatten

SHAPE_HELP = "an input shape like 1,3,32,32 (language models: batch,tokens)"


def parse_shape(text: str, flag: str = "--example-shape") -> list[int]:
    """``"1,3,32,32"`` (or ``1x3x32x32``) -> ``[1, 3, 32, 32]``; anything else raises."""
    try:
        dims = [int(d) for d in text.replace("x", ",").split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise ConfigError(f"{flag} must be positive integers like 1,3,32,32, not {text!r}")
    return dims


def describe(inputs: Any) -> dict[str, Any]:
    """The JSON spec of ``inputs`` (a tensor, a tuple/list of tensors, or a dict of them)."""
    if isinstance(inputs, torch.Tensor):
        spec: dict[str, Any] = {
            "kind": "tensor",
            "shape": list(inputs.shape),
            "dtype": str(inputs.dtype).removeprefix("torch."),
        }
        if inputs.numel() and not inputs.is_floating_point():
            lo, hi = int(inputs.min()), int(inputs.max())
            spec.update({"fill": lo} if lo == hi else {"low": lo, "high": hi + 1})
        return spec
    if isinstance(inputs, dict):
        return {"kind": "dict", "items": {k: describe(v) for k, v in inputs.items()}}
    if isinstance(inputs, (tuple, list)):
        return {"kind": "tuple", "items": [describe(v) for v in inputs]}
    raise ConfigError(
        f"example inputs must be tensors, tuples or dicts, not {type(inputs).__name__}"
    )


def rebuild(
    spec: dict[str, Any], seed: int = 0, batch_size: int | None = None, seq_len: int | None = None
) -> Any:
    """Inputs of ``spec``'s shapes and dtypes; ``batch_size``/``seq_len`` replace dims 0 and 1."""
    gen = torch.Generator().manual_seed(seed)

    def build(s: Any) -> Any:
        if not isinstance(s, dict) or "kind" not in s:
            raise ConfigError(f"malformed example-input spec {s!r:.80}")
        if s["kind"] == "dict":
            return {k: build(v) for k, v in s["items"].items()}
        if s["kind"] == "tuple":
            return tuple(build(v) for v in s["items"])
        shape = [int(d) for d in s["shape"]]
        if batch_size is not None and shape:
            shape[0] = batch_size
        if seq_len is not None and len(shape) == 2 and not s["dtype"].startswith("float"):
            shape[1] = seq_len  # token ids and masks: [batch, tokens]
        dtype = getattr(torch, s["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ConfigError(f"example-input spec names unknown dtype {s['dtype']!r}")
        if dtype.is_floating_point:
            return torch.randn(shape, generator=gen).to(dtype)
        if "fill" in s:
            return torch.full(shape, int(s["fill"]), dtype=dtype)
        return torch.randint(int(s["low"]), int(s["high"]), shape, generator=gen, dtype=dtype)

    return build(spec)


def for_model(
    model: nn.Module,
    shape: list[int] | None = None,
    batch_size: int = 1,
    seq_len: int = 128,
    seed: int = 0,
) -> Any:
    """Inputs to run ``model`` on: a random tensor of ``shape`` (token ids for a language model);
    else ``{"input_ids", "attention_mask"}`` for a Hugging Face language model (its own dummy
    inputs for encoder-decoders); else ``[batch, in_features]`` of its first Linear."""
    gen = torch.Generator().manual_seed(seed)
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and getattr(config, "is_encoder_decoder", False) and shape is None:
        dummy = getattr(model, "dummy_inputs", None)
        if isinstance(dummy, dict) and dummy:
            return dict(dummy)
    if isinstance(vocab, int) and (shape is None or len(shape) == 2):
        longest = getattr(config, "max_position_embeddings", None) or seq_len
        b, t = shape if shape is not None else (batch_size, min(seq_len, longest))
        ids = torch.randint(0, vocab, (b, t), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if shape is not None:
        return torch.randn(shape, generator=gen).to(dtype)
    first = next(
        (m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))), None
    )
    if isinstance(first, nn.Linear):
        return torch.randn(batch_size, first.in_features, generator=gen).to(dtype)
    raise ConfigError(
        "cannot guess this model's input: pass --example-shape N,C,H,W (the shape of one batch)"
    )


def call(model: nn.Module, inputs: Any) -> Any:
    """``model`` applied to ``inputs``: a dict as keywords, a tuple as positional arguments."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


@contextmanager
def seeded(inputs: Any, seed: int = 0) -> Iterator[None]:
    """Inside: the CPU generator, and that of every CUDA device holding a tensor of ``inputs``,
    start from ``seed``; outside: the caller's random state is untouched (``fork_rng``)."""
    cuda = sorted(
        {t.device.index or 0 for t in flatten(inputs) if isinstance(t, torch.Tensor) and t.is_cuda}
    )
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for i in cuda:
            torch.cuda.default_generators[i].manual_seed(seed)
        yield
