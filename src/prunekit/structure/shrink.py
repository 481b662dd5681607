"""``pk.shrink``: remove pruned channels and heads physically, then prove nothing changed."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from ..errors import VerificationError
from ..masks import bake
from ..threads import torch_threads
from .experts import expert_groups, patch_moe
from .graph import call_model, check_inputs, eps_attr, flatten, is_rms_norm
from .groups import Group, cached_groups, channel_groups
from .heads import head_groups, resize_heads
from .hf_config import update_config
from .layers import drop_layers, layer_group
from .resize import resize


def _removals(groups: list[Group]) -> dict[int, dict[int, set[int]]]:
    """id(tensor) -> dim -> indices to remove, from every unit whose slices are all masked off.

    Tied groups (GQA query heads of one layer) lose the same number of units: the fewest dead
    units among them.
    """
    cache: dict = {}
    dead = {id(g): g.dead(cache) for g in groups}
    quota: dict[str, int] = {}
    for g in groups:
        if g.tie is not None:
            quota[g.tie] = min(quota.get(g.tie, g.units), int(dead[id(g)].sum()))
    out: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for g in groups:
        d = dead[id(g)]
        if g.tie is not None:
            d = d & (torch.cumsum(d.long(), 0) <= quota[g.tie])
        if not d.any():
            continue
        for slot, idx in g.members():
            out[id(slot.tensor)][slot.dim].update(i for i in idx[d].reshape(-1).tolist() if i >= 0)
    return out


@torch.no_grad()
def _slice(model: nn.Module, removals: dict[int, dict[int, set[int]]]) -> list[nn.Module]:
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
                        keep = [i for i in range(data.shape[dim]) if i not in drop]
                        data = data.index_select(dim, torch.tensor(keep, device=data.device))
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
        heads = head_groups(small, example_inputs=example_inputs)
        channels = cached_groups(small, example_inputs)  # from pk.prune, remapped by deepcopy
        if channels is None:
            analysis = channel_groups(small, example_inputs, warn=False)
            ref = analysis.graph.outputs  # the masked model's outputs, recorded by the trace
            channels = analysis.groups
        small.__dict__.pop("_pk_channel_groups", None)
        layers = layer_group(small, example_inputs, strict=False)
        dead_layers = layers.dead() if layers is not None else None
        experts = expert_groups(small)
        removals = _removals(channels + heads + experts)
        if dead_layers is not None and dead_layers.any():
            drop_layers(small, layers, dead_layers)
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
