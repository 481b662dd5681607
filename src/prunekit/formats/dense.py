"""``dense``: the tensor as it is, stored under its own name (what plain transformers reads)."""

from __future__ import annotations

import torch

from .base import FORMATS, Encoded, Format, Meta, Parts, Shape, check_keys, fail


@FORMATS.register("dense", examples=("unstructured:0.0", "unstructured:0.5"))
class Dense(Format):
    part_names = ("",)

    def encode(self, t: torch.Tensor) -> Encoded:
        return Encoded({"": t})

    def decode(self, parts: Parts, meta: Meta, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        check_keys(meta, ())
        t = parts.get("")
        if t is None or t.dtype != dtype or tuple(t.shape) != shape:
            got = "nothing" if t is None else f"{t.dtype} {tuple(t.shape)}"
            raise fail(f"dense tensor is {got}, expected {dtype} {shape}")
        return t
