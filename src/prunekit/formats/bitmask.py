"""``bitmask``: one bit per weight (packed, MSB first), then the non-zero values in order."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._bits import pack_bits, raw, scatter, unpack_bits, values_tensor
from .base import FORMATS, Encoded, Format, Meta, Parts, Shape, check_keys, fail, part


@FORMATS.register("bitmask", examples=("unstructured:0.5", "2:4"))  # tensor patterns it stores
class Bitmask(Format):
    part_names = ("mask", "values")

    def encode(self, t: torch.Tensor) -> Encoded:
        r = raw(t)
        keep = r != 0
        return Encoded({"mask": pack_bits(keep), "values": values_tensor(r[keep], t.dtype)})

    def decode(self, parts: Parts, meta: Meta, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        check_keys(meta, ())
        numel = math.prod(shape)
        keep = unpack_bits(part(parts, "mask", torch.uint8), numel, "mask")
        pos = np.flatnonzero(keep)
        values = part(parts, "values", dtype)
        if values.numel() != pos.size:
            raise fail(f"mask has {pos.size} set bits but {values.numel()} values are stored")
        return scatter(numel, pos, values, dtype, shape)
