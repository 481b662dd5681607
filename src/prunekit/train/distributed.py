"""Masks under ``torch.distributed``: one decision, on every rank.

Data-aware statistics are already all-reduced while they are collected (see
:mod:`prunekit.calibrate`), so every rank scores the same numbers. Floating-point reductions may
still differ in the last bit between ranks, and a solver (SparseGPT) rewrites weights, so after
each pruning step :func:`broadcast_masks` makes rank ``src``'s masks, and the weights they mask,
those of every rank.

FSDP2 (``fully_shard``) runs on CPU with gloo: prune the full model, shard it, then
:func:`shard_masks` makes the masks ``DTensor`` shards like their parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import SUFFIX, MaskState, arm


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
    if any(type(mask).__name__ == "DTensor" for *_, mask in items):
        raise ConfigError(
            "the masks are sharded (FSDP2): broadcast_masks before fully_shard, not after"
        )
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


def data_parallel(model: nn.Module) -> nn.Module:
    """The module to run training forwards through: ``model`` wrapped in
    ``DistributedDataParallel`` under ``torch.distributed`` (gradients averaged across ranks), else
    ``model`` itself (also when it is already a DDP wrapper).

    Mask buffers are left out of DDP's buffer broadcast: :func:`broadcast_masks` keeps them equal
    after each pruning step, so sending them with every forward would only cost bandwidth.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not distributed() or isinstance(model, DistributedDataParallel):
        return model
    masks = [name for name, _ in model.named_buffers() if name.endswith(SUFFIX)]
    ignored = set(getattr(model, "_ddp_params_and_buffers_to_ignore", ()))
    model._ddp_params_and_buffers_to_ignore = sorted(ignored | set(masks))  # read by DDP's init
    return DistributedDataParallel(model, find_unused_parameters=True)


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce the gradients of ``params`` (outside any DDP wrapper) to their mean across
    ranks; a missing gradient counts as zero. No-op outside distributed."""
    if not distributed() or not params:
        return
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)


def shard_masks(model: nn.Module) -> int:
    """After ``torch.distributed.fsdp.fully_shard``: shard every mask like its parameter.

    FSDP2 replaces parameters by ``DTensor`` shards; a full-shape mask cannot multiply them
    (``aten.mul_.Tensor got mixed torch.Tensor and DTensor``). This turns each such mask into a
    ``DTensor`` with the parameter's mesh and placements and re-arms it, so gradients, optimizer
    state and weights stay masked on every shard. Prune before sharding (pruning a sharded model
    is not supported); call this once after ``fully_shard``. Returns the number of masks sharded.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    count = 0
    for _, module, pname, mask in list(MaskState(model).items()):
        p = getattr(module, pname)
        if isinstance(p, DTensor) and not isinstance(mask, DTensor):
            module._buffers[pname + SUFFIX] = distribute_tensor(mask, p.device_mesh, p.placements)
            arm(module)
            count += 1
    return count
