"""Picking a format per tensor: ``"auto"`` tries every registered format and keeps the smallest."""

from __future__ import annotations

import torch

from .base import FORMATS, Encoded

AUTO = "auto"


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
