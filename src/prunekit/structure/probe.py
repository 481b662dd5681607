"""A smaller input cut from ``example_inputs``, on which ``pk.shrink`` compares the masked and the
shrunk model.

Every channel and head of a convolution, linear, norm or attention takes part in a forward pass
whatever the batch size, the number of tokens or the image size, so the comparison loses no unit
on a cut of the example inputs, and costs a fraction of a full pass: the first sample of a
batch, the first tokens of token ids (their masks, type and position ids cut alike), the
top-left corner of images. What a cut no longer reaches are table rows indexed by data (token
ids and positions past the cut), which a removed channel or head slices along every row alike.
Attention that takes another path on sequences up to a window or chunk length (Reformer's LSH
hashing and chunks, Longformer's sliding windows, a sliding-window mask) would be checked on its
plain path only: a cut keeps at least two of its model's windows (:data:`WINDOW_FIELDS`).
A model that refuses the cut (a fixed sequence length or image size) is compared on
``example_inputs`` itself (:func:`prunekit.structure.shrink.shrink`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..outputs import flatten, map_tensors

#: the fewest tokens a cut keeps, and the fraction of the sequence it keeps at least
MIN_TOKENS, TOKEN_FRACTION = 16, 8
#: the smallest image side a cut keeps, and the fraction of the side it keeps at least
MIN_SIDE, SIDE_FRACTION = 32, 4
#: config fields of a sequence length up to which attention takes a simpler path
WINDOW_FIELDS = (
    "attention_window",
    "lsh_attn_chunk_length",
    "local_attn_chunk_length",
    "sliding_window",
)


def window_tokens(model: nn.Module) -> int:
    """The fewest tokens on which every attention path of ``model`` runs: two of its longest
    window or chunk (0 where its config names none)."""
    config = getattr(model, "config", None)
    sizes = [0]
    for field in WINDOW_FIELDS:
        value = getattr(config, field, None)
        values = value if isinstance(value, (list, tuple)) else [value]  # per layer (Longformer)
        sizes += [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return 2 * max(sizes)


def probe(inputs: Any, min_tokens: int = 0) -> Any | None:
    """``inputs`` cut to one sample, fewer tokens (at least ``min_tokens``: see
    :func:`window_tokens`) or a smaller image, or None where no cut applies (nothing to cut, or
    inputs of another form: see the module docstring)."""
    if not _plain(inputs):
        return None
    leaves = [t for t in flatten(inputs) if isinstance(t, torch.Tensor)]
    if not leaves or any(t.dim() == 0 for t in leaves):
        return None
    cut: dict[int, int] = {}  # dimension -> its new size, for every tensor
    if len({t.shape[0] for t in leaves}) == 1 and leaves[0].shape[0] > 1:
        cut[0] = 1
    shapes = {tuple(t.shape) for t in leaves}
    if len(shapes) == 1:
        shape = next(iter(shapes))
        if len(shape) == 2 and any(_is_index(t) for t in leaves):  # token ids [batch, tokens]
            cut[1] = max(MIN_TOKENS, min_tokens, shape[1] // TOKEN_FRACTION)
        elif len(shape) == 4 and all(t.is_floating_point() for t in leaves):  # images
            cut[2] = max(MIN_SIDE, shape[2] // SIDE_FRACTION)
            cut[3] = max(MIN_SIDE, shape[3] // SIDE_FRACTION)
    cut = {d: n for d, n in cut.items() if n < leaves[0].shape[d]}
    return map_tensors(inputs, lambda t: _cut(t, cut)) if cut else None


def _plain(value: Any) -> bool:
    """Tensors and plain values (numbers, strings, None) in plain tuples, lists and dicts: a
    named tuple, a tokenizer's encoding, a KV cache or any other object is not rebuilt or cut."""
    if type(value) in (tuple, list):
        return all(_plain(v) for v in value)
    if type(value) is dict:
        return all(_plain(v) for v in value.values())
    return value is None or isinstance(value, (torch.Tensor, bool, int, float, str))


def _is_index(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _cut(t: torch.Tensor, cut: dict[int, int]) -> torch.Tensor:
    out = t
    for dim, n in cut.items():
        out = out.narrow(dim, 0, n)
    fmt = torch.channels_last
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=fmt):
        return out.contiguous(memory_format=fmt)  # the layout the caller chose
    return out.contiguous()
