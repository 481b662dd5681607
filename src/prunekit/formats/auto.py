"""Picking a format per tensor: ``"auto"`` tries every registered format and keeps the smallest."""

from __future__ import annotations

import torch

from .base import FORMATS, Encoded

AUTO = "auto"
#: ``"auto"`` stores a whole checkpoint dense when compressing saves less than this share of its
#: dense size: a plain file that other libraries load is worth more than a saving that small
MIN_SAVING = 0.01


def worth_compressing(stored_bytes: int, dense_bytes: int) -> bool:
    """Whether a checkpoint's compressed size saves at least :data:`MIN_SAVING` of its dense one."""
    return stored_bytes <= (1 - MIN_SAVING) * dense_bytes


def encode(t: torch.Tensor, fmt: str = AUTO) -> tuple[str, Encoded]:
    """``(format name, encoded)`` for ``t``; ``fmt="auto"`` picks the smallest (dense on ties).

    A named format that cannot hold ``t`` (N:M on an unpatterned tensor, say) falls back to dense.
    """
    t = t.detach().cpu().contiguous()
    names = FORMATS.names() if fmt == AUTO else [fmt]
    best: tuple[tuple[int, bool], str, Encoded] | None = None
    for name in names:
        enc = FORMATS.get(name)().encode(t)  # an unknown name raises UnknownChoiceError
        rank = (enc.nbytes, name != "dense") if enc is not None else None
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, name, enc)
    if best is None:
        return "dense", FORMATS.get("dense")().encode(t)
    return best[1], best[2]
