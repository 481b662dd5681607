"""``pk.shrink``: remove pruned channels and heads physically, then prove nothing changed."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from ..errors import VerificationError
from ..masks import bake, mask_names
from ..threads import torch_threads
from .experts import expert_groups, patch_moe
from .graph import call_model, check_inputs, eps_attr, flatten, is_rms_norm
from .groups import Group, cached_groups, channel_groups
from .heads import head_groups, resize_heads
from .hf_config import update_config
from .layers import dead_layers, drop_layers
from .resize import resize

Removals = dict[int, dict[int, torch.Tensor]]


def _removals(groups: list[Group]) -> Removals:
    """id(tensor) -> dim -> bool ``[size]``, True where the index goes: from every unit whose
    slices are all masked off.

    Tied groups (GQA query heads of one layer) lose the same number of units: the fewest dead
    units among them.
    """
    cache: dict = {}
    dead = {id(g): g.dead(cache) for g in groups}
    quota: dict[str, int] = {}
    for g in groups:
        if g.tie is not None:
            quota[g.tie] = min(quota.get(g.tie, g.units), int(dead[id(g)].sum()))
    out: Removals = defaultdict(dict)
    for g in groups:
        d = dead[id(g)]
        if g.tie is not None:
            d = d & (torch.cumsum(d.long(), 0) <= quota[g.tie])
        g.info["dead"] = d  # the units that go (head adapters that remember kept heads read it)
        if not d.any():
            continue
        for slot, idx in g.members():
            drop = out[id(slot.tensor)].get(slot.dim)
            if drop is None:
                drop = torch.zeros(slot.tensor.shape[slot.dim], dtype=torch.bool)
                out[id(slot.tensor)][slot.dim] = drop
            picked = idx[d].reshape(-1)
            drop[picked[picked >= 0]] = True
    return out


def _unexplained(model: nn.Module, removals: Removals, skip: set[int]) -> bool:
    """Some fully masked row or column of a weight outside the ``skip`` modules is not in
    ``removals`` (heads were pruned: their groups must be found too)."""
    for module in model.modules():
        if id(module) in skip:
            continue
        for pname, mask in mask_names(module):
            p = getattr(module, pname)
            for dim in range(min(mask.dim(), 2)):
                dead = ~mask.movedim(dim, 0).reshape(mask.shape[dim], -1).any(1).cpu()
                gone = removals.get(id(p), {}).get(dim)
                if bool((dead & ~gone if gone is not None else dead).any()):
                    return True
    return False


@torch.no_grad()
def _slice(model: nn.Module, removals: Removals) -> list[nn.Module]:
    """Replace every tensor with removals by its kept slice, in every module that holds it."""
    touched: dict[int, nn.Module] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            if any(t is not None and id(t) in removals for t in store.values()):
                touched[id(module)] = module
    new: dict[int, torch.Tensor] = {}
    for module in touched.values():
        for store in (module._parameters, module._buffers):
            for attr, t in list(store.items()):
                if t is None or id(t) not in removals:
                    continue
                if id(t) not in new:
                    data = t.detach()
                    for dim, drop in removals[id(t)].items():
                        keep = torch.nonzero(~drop).flatten().to(data.device)
                        data = data.index_select(dim, keep)
                    data = data.contiguous().clone()
                    new[id(t)] = (
                        nn.Parameter(data, requires_grad=t.requires_grad)
                        if isinstance(t, nn.Parameter)
                        else data
                    )
                store[attr] = new[id(t)]
    return list(touched.values())


@torch.no_grad()
def rescale_rms_norms(model: nn.Module, widths: dict[int, int]) -> None:
    """An RMS norm over D' of D channels (the rest were zero) equals the original when its weight
    is scaled by sqrt(D/D') and its eps by D/D': mean over D' = (D/D') * mean over D."""
    for m in model.modules():
        old = widths.get(id(m))
        if old is None or m.weight.shape[0] == old:
            continue
        ratio = old / m.weight.shape[0]
        m.weight.mul_(ratio**0.5)
        attr = eps_attr(m)
        setattr(m, attr, getattr(m, attr) * ratio)


def max_rel_error(ref: Any, out: Any) -> float:
    """max |a - b| / max |b| over all output tensors (caches excluded)."""
    a = [t for t in flatten(ref) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    b = [t for t in flatten(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        raise VerificationError(
            "the shrunk model's outputs differ in structure or shape from the masked model's: "
            f"{[tuple(x.shape) for x in a]} vs {[tuple(y.shape) for y in b]}"
        )
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        scale = x.detach().abs().max().clamp_min(1e-12)
        worst = max(worst, float((x.detach() - y.detach()).abs().max() / scale))
    return worst


def _run(model: nn.Module, inputs: Any) -> Any:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return call_model(model, inputs)
    finally:
        model.train(was)


def shrink(model: nn.Module, example_inputs: Any, *, rtol: float = 1e-4) -> nn.Module:
    """A physically smaller copy of a masked ``model``: every channel group and attention head
    whose slices are all masked off is removed, module attributes are updated, masks are baked.

    The copy is checked against ``model`` on ``example_inputs`` (eval mode): a relative error
    above ``rtol`` raises :class:`~prunekit.errors.VerificationError`. ``model`` is not changed.
    """
    check_inputs(example_inputs)
    ref = None
    with torch_threads(1):  # hundreds of small ops
        small = copy.deepcopy(model)
        channels = cached_groups(small, example_inputs)  # from pk.prune, remapped by deepcopy
        if channels is None:
            analysis = channel_groups(small, example_inputs, warn=False)
            ref = analysis.graph.outputs  # the masked model's outputs, recorded by the trace
            channels = analysis.groups
        experts = expert_groups(small)
        removals = _removals(channels + experts)
        layers = dead_layers(small, example_inputs)
        gone: set[int] = set()  # modules of the blocks that go
        if layers is not None:
            blocks, dead = layers[0].info["blocks"], torch.nonzero(layers[1]).flatten().tolist()
            gone = {id(m) for i in dead for m in blocks[i].modules()}
        heads: list[Group] = []
        # heads are searched where some were pruned (masked rows or columns nothing else
        # removes) and where a config must be told every attention's counts
        if hasattr(getattr(small, "config", None), "to_dict") or _unexplained(
            small, removals, gone
        ):
            heads = head_groups(small, example_inputs=example_inputs)
            removals = _removals(channels + heads + experts)
        for cache in ("_pk_channel_groups", "_pk_found_heads"):  # the shapes change
            small.__dict__.pop(cache, None)
        if layers is not None:
            drop_layers(small, *layers)
        bake(small)
        widths = {id(m): m.weight.shape[0] for m in small.modules() if is_rms_norm(m)}
        for module in _slice(small, removals):
            resize(module)
        rescale_rms_norms(small, widths)
        patch_moe(small, [g.info["moe"] for g in experts])
        update_config(small, resize_heads(heads))
    if ref is None:
        ref = _run(model, example_inputs)  # its masks are armed already: no re-zeroing
    try:
        out = _run(small, example_inputs)
    except Exception as e:  # the shrunk model no longer runs: never hand it out
        raise VerificationError(
            f"the shrunk {type(model).__name__} fails on example_inputs: {type(e).__name__}: {e}"
        ) from e
    err = max_rel_error(ref, out)
    if not err <= rtol:
        raise VerificationError(
            f"the shrunk {type(model).__name__} differs from the masked model on example_inputs: "
            f"relative error {err:.2e} > {rtol:g}"
        )
    return small
