"""Masks under ``torch.distributed``: one decision, on every rank.

Data-aware statistics are already all-reduced while they are collected (see
:mod:`prunekit.calibrate`), so every rank scores the same numbers. Floating-point reductions may
still differ in the last bit between ranks, and a solver (SparseGPT) rewrites weights, so after
each pruning step :func:`broadcast_masks` makes rank ``src``'s masks, and the weights they mask,
those of every rank.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import MaskState, arm


def distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_masks(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s masks and masked weights to every rank (no-op outside distributed).

    Every rank must hold masks on the same parameters (the same Pruner config). Masks are sent
    as uint8, weights in their own dtype; each rank's mask is replaced by ``src``'s, which only
    shrinks it when the ranks started from the same masks.
    """
    if not distributed():
        return
    import torch.distributed as dist

    items = list(MaskState(model).items())
    counts = torch.tensor([len(items), -len(items)])
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    if int(counts[0]) != -int(counts[1]):
        raise ConfigError(
            f"ranks hold different numbers of masks (this rank: {len(items)}); build every "
            "rank's Pruner with the same config"
        )
    for _, module, pname, mask in items:
        flags = mask.to(torch.uint8)
        dist.broadcast(flags, src)
        mask.copy_(flags.bool())
        dist.broadcast(getattr(module, pname).data, src)
        arm(module)
