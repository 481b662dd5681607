"""Whole blocks (transformer layers, residual blocks) as prunable units.

The blocks are the longest ``nn.ModuleList`` of same-typed modules. A block is removable when
it computes the identity once its parameters are zero (a pre-norm residual block: every branch
ends in a zeroed projection, ``h + 0 = h``), checked on the example inputs before anything is
masked. Masking a block zeroes all its parameters, so the masked model computes what the model
without the block computes; :func:`drop_layers` then deletes it from the list and patches the
Hugging Face config (``num_hidden_layers``, per-layer type lists, ``layer_idx`` used by caches).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..calibrate import first_output, hidden_key
from ..errors import TargetError
from ..masks import mask_names
from .graph import call_model, eval_mode
from .groups import Group, Slot

#: config fields that list one entry per layer
PER_LAYER_FIELDS = ("layer_types",)


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The longest ``nn.ModuleList`` of two or more same-typed modules that hold parameters."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) < 2 or len({type(b) for b in m}) != 1:
            continue
        if next(m[0].parameters(), None) is None:
            continue
        if best is None or len(m) > len(best[1]):
            best = (name, m)
    return best


class _Captured(Exception):
    """Stops a forward pass once the first block's inputs are captured."""


@torch.no_grad()
def _zeroed_is_identity(model: nn.Module, block: nn.Module, example_inputs: Any) -> bool:
    """Run the model to capture ``block``'s inputs; a copy of it with zero parameters must
    return its hidden-state input unchanged."""
    seen: list[tuple[tuple, dict]] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, kwargs))
        raise _Captured  # the rest of the forward is not needed

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with eval_mode(model):
            call_model(model, example_inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not seen:
        return False
    args, kwargs = seen[0]
    # a KV cache already holds this block's keys: run the copy without one
    kwargs = {k: None if hasattr(v, "get_seq_length") else v for k, v in kwargs.items()}
    zeroed = copy.deepcopy(block)
    for p in zeroed.parameters():
        p.zero_()
    key = hidden_key(args, kwargs)
    hidden = args[key] if isinstance(key, int) else kwargs[key]
    out = first_output(zeroed(*args, **kwargs))
    return out.shape == hidden.shape and torch.equal(out, hidden)


def layer_group(model: nn.Module, example_inputs: Any, *, strict: bool = True) -> Group | None:
    """One group whose unit ``i`` is block ``i`` (all its parameters), or None (``strict``:
    raise) when the model has no blocks that can go exactly."""
    found = find_layers(model)
    if found is None or not _zeroed_is_identity(model, found[1][0], example_inputs):
        if strict:
            raise TargetError(
                f"{type(model).__name__} has no list of blocks that computes the identity with "
                "zero weights (pre-norm residual blocks); whole layers cannot be removed exactly"
            )
        return None
    return _blocks_group(*found)


def dead_layers(model: nn.Module, example_inputs: Any) -> tuple[Group, torch.Tensor] | None:
    """The block group and its fully masked blocks, where some block is fully masked and the
    blocks compute the identity with zero weights (checked only then: it runs the model)."""
    found = find_layers(model)
    if found is None:
        return None
    dead = torch.tensor([_masked_off(block) for block in found[1]])
    if not dead.any() or not _zeroed_is_identity(model, found[1][0], example_inputs):
        return None
    return _blocks_group(*found), dead


def _masked_off(block: nn.Module) -> bool:
    """Every mask of the block is all False, and it has one (:meth:`Group.dead` of its unit)."""
    masks = [m for module in block.modules() for _, m in mask_names(module)]
    return bool(masks) and not any(m.numel() and bool(m.view(torch.uint8).max()) for m in masks)


def _blocks_group(name: str, blocks: nn.ModuleList) -> Group:
    slots, index = [], []
    for b, block in enumerate(blocks):
        for pname, p in block.named_parameters():
            owner, _, attr = f"{b}.{pname}".rpartition(".")
            module = blocks.get_submodule(owner)
            idx = torch.full((len(blocks), p.shape[0]), -1, dtype=torch.long)  # [blocks, rows]
            idx[b] = torch.arange(p.shape[0])
            slots.append(Slot(f"{name}.{b}.{pname}", module, attr, 0))
            index.append(idx)
    group = Group(name, "layer", slots, index)
    group.info.update(blocks=list(blocks), path=name)
    return group


def drop_layers(model: nn.Module, group: Group, dead: torch.Tensor) -> None:
    """Delete the blocks whose units are ``dead`` from ``model`` and patch its config."""
    path = group.info["path"]
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old: nn.ModuleList = getattr(parent, attr)
    kept = [i for i in range(len(old)) if not bool(dead[i])]
    setattr(parent, attr, nn.ModuleList([old[i] for i in kept]))
    for i, block in enumerate(getattr(parent, attr)):
        for sub in block.modules():  # cache slots follow the new numbering
            if isinstance(sub.__dict__.get("layer_idx"), int):
                sub.layer_idx = i
    config = getattr(model, "config", None)
    if config is None or getattr(config, "num_hidden_layers", None) != len(old):
        return
    config.num_hidden_layers = len(kept)
    for fld in PER_LAYER_FIELDS:
        values = getattr(config, fld, None)
        if isinstance(values, list) and len(values) == len(old):
            setattr(config, fld, [values[i] for i in kept])
