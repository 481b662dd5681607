"""Masks in a checkpoint: recorded with the tensor they belong to, re-attached on load.

A masked tensor is saved with its mask applied, so its mask is almost always exactly its non-zeros:
the entry then says ``"mask": "nonzero"``, which costs nothing. Where they differ (a kept weight
that is exactly zero) the mask is stored as a packed bitmask, one bit per weight, in the part
``<name>::keep_mask``. Either way the loader checks what a genuine save guarantees: every weight
outside the mask is zero.
"""

from __future__ import annotations

import torch

from ._bits import pack_bits, unpack_bits
from .base import fail, part

#: the safetensors part (``<name>::keep_mask``) that holds a bitmask-recorded mask; no format
#: may use this part name (tests/test_checkpoint_masks.py checks)
MASK_PART = "keep_mask"


def encode_mask(t: torch.Tensor, mask: torch.Tensor) -> tuple[str, torch.Tensor | None]:
    """How to record ``mask`` of the masked tensor ``t``: ``(kind, packed bits or None)``."""
    mask = mask.detach().cpu().to(torch.bool)
    if torch.equal(mask, t != 0):
        return "nonzero", None
    return "bitmask", pack_bits(mask.reshape(-1).numpy())  # [ceil(numel / 8)] uint8


def decode_mask(kind: str, t: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mask of the decoded tensor ``t``; refuses a mask that keeps none of ``t``'s zeros."""
    if kind == "nonzero":
        return t != 0
    packed = part(parts, MASK_PART, torch.uint8)
    bits = unpack_bits(packed, t.numel(), "mask")
    mask = torch.from_numpy(bits.astype(bool)).reshape(t.shape)
    if bool((t[~mask] != 0).any()):
        raise fail("weights outside the recorded mask are not zero (a save writes them as zero)")
    return mask
