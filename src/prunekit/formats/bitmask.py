"""``bitmask``: one bit per weight (packed, MSB first), then the non-zero values in order."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .base import (
    FORMATS,
    Encoded,
    Format,
    check_keys,
    fail,
    pack_bits,
    part,
    raw,
    scatter,
    unpack_bits,
    values_tensor,
)


@FORMATS.register("bitmask")
class Bitmask(Format):
    part_names = ("mask", "values")

    def encode(self, t: torch.Tensor) -> Encoded:
        r = raw(t)
        keep = r != 0
        return Encoded({"mask": pack_bits(keep), "values": values_tensor(r[keep], t.dtype)})

    def decode(
        self,
        parts: dict[str, torch.Tensor],
        meta: dict[str, Any],
        shape: tuple[int, ...],
        dtype: torch.dtype,
    ) -> torch.Tensor:
        check_keys(meta, ())
        numel = math.prod(shape)
        keep = unpack_bits(part(parts, "mask", torch.uint8), numel, "mask")
        pos = np.flatnonzero(keep)
        values = part(parts, "values", dtype)
        if values.numel() != pos.size:
            raise fail(f"mask has {pos.size} set bits but {values.numel()} values are stored")
        return scatter(numel, pos, values, dtype, shape)
