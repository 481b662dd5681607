"""``pk.shrink``: remove pruned channels and heads physically, then prove nothing changed."""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, VerificationError
from ..masks import mask_names, mul_mask_, unmask
from ..outputs import map_tensors, max_rel_error
from ..provenance import record
from ..threads import torch_threads
from .experts import expert_groups, patch_moe
from .graph import call_model, check_inputs, eps_attr, eval_mode, flatten, is_rms_norm
from .groups import Group, cached_groups, channel_groups, live_slices
from .heads import head_groups, resize_heads
from .hf_config import update_config
from .layers import dead_layers, drop_layers
from .probe import probe, window_tokens
from .resize import resize

Removals = dict[int, dict[int, torch.Tensor]]
#: what pk.prune keeps on the model (channel groups, head layouts): the copy's shapes differ
_CACHES = ("_pk_channel_groups", "_pk_found_heads")


def _removals(groups: list[Group], cache: dict | None = None) -> Removals:
    """id(tensor) -> dim -> bool ``[size]``, True where the index goes: from every unit whose
    slices are all masked off. ``cache`` shares the masks' per-slice work between calls.

    Tied groups (GQA query heads of one layer) lose the same number of units: the fewest dead
    units among them.
    """
    cache = {} if cache is None else cache
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


def _unexplained(model: nn.Module, removals: Removals, skip: set[int], cache: dict) -> bool:
    """Some fully masked row or column of a weight outside the ``skip`` modules is not in
    ``removals`` (heads were pruned: their groups must be found too). ``cache``: the live
    slices :func:`_removals` computed."""
    for module in model.modules():
        if id(module) in skip:
            continue
        for pname, mask in mask_names(module):
            p = getattr(module, pname)
            for dim in range(min(mask.dim(), 2)):
                key = (id(mask), dim)
                if key not in cache:
                    cache[key] = live_slices(mask, dim)
                dead = ~cache[key]
                gone = removals.get(id(p), {}).get(dim)
                if bool((dead & ~gone if gone is not None else dead).any()):
                    return True
    return False


@torch.no_grad()
def _kept(t: torch.Tensor, drops: dict[int, torch.Tensor], mask: torch.Tensor | None) -> Any:
    """A new tensor: the kept slices of ``t`` (``drops``: dim -> bool, True where an index
    goes), its mask's zeros baked in; a parameter stays a parameter."""
    data = t.detach()
    if mask is not None and drops:
        # the dropped slices of a masked tensor are all masked off: when the mask keeps as many
        # entries as the kept block holds, it keeps every one of them and has nothing to bake
        block = math.prod(
            n - int(drops[d].sum()) if d in drops else n for d, n in enumerate(t.shape)
        )
        mask = None if int(torch.count_nonzero(mask)) == block else mask
    for dim in sorted(drops):  # dimension 0 first: the cheap one, and it makes the rest smaller
        keep = torch.nonzero(~drops[dim]).flatten().to(data.device)
        data = data.index_select(dim, keep)
        mask = mask.index_select(dim, keep) if mask is not None else None
    if mask is not None:
        data = mul_mask_(data if drops else data.clone(), mask)
    channels_last = torch.channels_last
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=channels_last):
        data = data.contiguous(memory_format=channels_last)  # the layout the model chose
    if isinstance(t, nn.Parameter):
        return nn.Parameter(data, requires_grad=t.requires_grad)
    return data


@torch.no_grad()
def _copy(model: nn.Module, removals: Removals, skip: set[int]) -> tuple[nn.Module, dict]:
    """A deep copy of ``model`` whose tensors hold only their kept slices, with the masks baked
    in and dropped, built without copying the full tensors first. Modules in ``skip`` (blocks
    that go) are copied as they are. Returns the copy and the deepcopy memo (id of an original
    object -> its copy)."""
    memo: dict[int, Any] = {}
    for cache in _CACHES:  # groups of the old shapes: not carried over
        if cache in model.__dict__:
            memo[id(model.__dict__[cache])] = None
    for module in model.modules():
        masks = dict(mask_names(module))
        for mask in masks.values():
            memo[id(mask)] = mask  # the copy's masks are dropped below
        if id(module) in skip:
            continue
        for store in (module._parameters, module._buffers):
            for attr, t in store.items():
                if t is None or id(t) in memo:
                    continue
                mask = masks.get(attr) if store is module._parameters else None
                drops = removals.get(id(t), {})
                if drops or mask is not None:
                    memo[id(t)] = _kept(t, drops, mask)
    small = copy.deepcopy(model, memo)
    for cache in _CACHES:
        small.__dict__.pop(cache, None)
    for module in small.modules():
        if _has_mask(module):
            unmask(module)
    return small, memo


def _has_mask(module: nn.Module) -> bool:
    return any(True for _ in mask_names(module))


def _masks_some(module: nn.Module) -> bool:
    """Some mask of ``module`` removes an entry."""
    return any(m.numel() and not m.view(torch.uint8).min() for _, m in mask_names(module))


def _holds(module: nn.Module, removals: Removals) -> bool:
    """``module`` holds a tensor that loses slices."""
    tensors = (*module._parameters.values(), *module._buffers.values())
    return any(t is not None and id(t) in removals for t in tensors)


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


def _finite(value: Any) -> bool:
    """Every floating tensor in ``value`` is finite."""
    return all(
        bool(torch.isfinite(t).all())
        for t in flatten(value)
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    )


def _run(model: nn.Module, inputs: Any) -> Any:
    with eval_mode(model), torch.no_grad():
        return call_model(model, inputs)


VERIFY = ("cut", "full")


def shrink(
    model: nn.Module, example_inputs: Any, *, rtol: float = 1e-4, verify_on: str = "cut"
) -> nn.Module:
    """A physically smaller copy of a masked ``model``: every channel group and attention head
    whose slices are all masked off is removed, module attributes are updated, masks are baked.

    The copy is checked against ``model`` (eval mode) on a cut of ``example_inputs`` (one
    sample, fewer tokens, a smaller image: :mod:`.probe`), or on ``example_inputs`` where the
    model refuses the cut: a relative error above ``rtol`` raises
    :class:`~prunekit.errors.VerificationError`. ``verify_on="full"`` always compares on the
    whole ``example_inputs`` (every position and token id they hold, one more masked forward).
    ``model`` is not changed.
    """
    if not isinstance(model, nn.Module):
        hint = (
            " (pk.prune returns a Pruner: pass the model it pruned)"
            if hasattr(model, "step")
            else ""
        )
        raise ConfigError(f"shrink takes a torch.nn.Module, got {type(model).__name__}{hint}")
    if verify_on not in VERIFY:
        raise ConfigError(f"unknown verify_on {verify_on!r}; valid choices: {VERIFY}")
    check_inputs(example_inputs)
    ref = None
    with torch_threads(1):  # hundreds of small ops
        layers = dead_layers(model, example_inputs)
        gone: set[int] = set()  # modules of the blocks that go
        if layers is not None:
            blocks, dead = layers[0].info["blocks"], torch.nonzero(layers[1]).flatten().tolist()
            gone = {id(m) for i in dead for m in blocks[i].modules()}
        channels = heads = experts = []
        removals: Removals = {}
        if any(id(m) not in gone and _masks_some(m) for m in model.modules()):
            # masks beyond the blocks that go: find the channels, experts and heads they remove
            channels = cached_groups(model, example_inputs)  # from pk.prune
            if channels is None:
                analysis = channel_groups(model, example_inputs, warn=False)
                if analysis.graph.exact:  # the masked model's outputs, recorded by the trace
                    ref = analysis.graph.outputs
                channels = analysis.groups
            experts = expert_groups(model)
            cache: dict = {}
            removals = _removals(channels + experts, cache)
            # heads are searched where some were pruned (masked rows or columns nothing else
            # removes) and where a config must be told every attention's counts
            if hasattr(getattr(model, "config", None), "to_dict") or _unexplained(
                model, removals, gone, cache
            ):
                heads = head_groups(model, example_inputs=example_inputs)
                removals = _removals(channels + heads + experts, cache)
        rms = {id(m): m.weight.shape[0] for m in model.modules() if is_rms_norm(m)}
        small, memo = _copy(model, removals, gone)
        if layers is not None:
            drop_layers(small, *layers)
        for module in model.modules():  # size attributes follow the sliced tensors
            if id(module) not in gone and _holds(module, removals):
                resize(memo[id(module)])
        rescale_rms_norms(small, {id(memo[k]): w for k, w in rms.items() if k in memo})
        moes, heads = copy.deepcopy(([g.info["moe"] for g in experts], heads), memo)
        patch_moe(small, moes)
        update_config(small, resize_heads(heads))
        record(model, small, memo)
    verify(model, small, example_inputs, ref, rtol, on_cut=verify_on == "cut")
    return small


def verify(
    model: nn.Module,
    small: nn.Module,
    example_inputs: Any,
    ref: Any,
    rtol: float,
    on_cut: bool = True,
) -> None:
    """Raise :class:`~prunekit.errors.VerificationError` unless ``small`` computes what the
    masked ``model`` computes (``ref``: its outputs on ``example_inputs``, if known), within
    ``rtol``. Both run on a cut of the inputs (:mod:`.probe`) where the masked model accepts
    it and ``on_cut`` is true, else on ``example_inputs``."""
    inputs, what = example_inputs, "example_inputs"
    cut = probe(example_inputs, window_tokens(model)) if ref is None and on_cut else None
    if cut is not None:
        try:
            ref = _run(model, cut)  # its masks are armed already: no re-zeroing
            inputs, what = cut, "a cut of example_inputs (fewer samples, tokens or pixels)"
        except Exception:  # a model that needs its full inputs: compared on them
            ref = None
        if ref is not None and not _finite(ref):  # the cut kept padding only, say
            ref, inputs, what = None, example_inputs, "example_inputs"
    if ref is None:
        ref = _run(model, example_inputs)
    try:
        out = _run(small, inputs)
    except Exception as e:  # the shrunk model no longer runs: never hand it out
        raise VerificationError(
            f"the shrunk {type(model).__name__} fails on {what}: {type(e).__name__}: {e}"
        ) from e
    err = max_rel_error(ref, out)
    if err <= rtol:
        return
    exact = _error_in_float64(model, small, inputs)
    if exact is not None and exact <= rtol:
        return  # float32 rounding, amplified (a final norm over massive activations, say)
    in64 = "" if exact is None else f" (in float64: {exact:.2e})"
    raise VerificationError(
        f"the shrunk {type(model).__name__} differs from the masked model on {what}: "
        f"relative error {err:.2e}{in64} > {rtol:g}"
    )


def _error_in_float64(model: nn.Module, small: nn.Module, inputs: Any) -> float | None:
    """The relative error of float64 copies of both models, where rounding does not hide
    whether they compute the same function: deep LLMs' massive residual activations (10^4 on
    SmolLM2), renormalised by the final norm, lift float32 rounding above 1e-4 at the logits,
    while float64 gives 0. None where float64 cannot run (memory, an op without it)."""

    def wide(t: torch.Tensor) -> torch.Tensor:
        return t.double() if t.is_floating_point() else t

    try:
        x = map_tensors(inputs, wide)
        ref = _run(copy.deepcopy(model).double(), x)
        return max_rel_error(ref, _run(copy.deepcopy(small).double(), x))
    except Exception:  # out of memory, or an op or kernel without float64
        return None
