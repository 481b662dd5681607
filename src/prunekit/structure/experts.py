"""Mixture-of-experts layers: found by structure, their experts as prunable units.

A MoE block is a module with two children: an *experts* module holding the experts' weights as
3-D parameters ``[experts, ...]`` (transformers 5: ``gate_up_proj [E, 2I, H]``,
``down_proj [E, H, I]``) and a ``num_experts`` attribute, and a *router* whose 2-D ``weight``
``[E, H]`` gives one logit per expert. Other children (Qwen2-MoE's shared expert and its gate)
are not experts and stay.

Masking an expert zeroes its slices and its router row, and the router's masked forward gives
its logit ``-inf``: no token is routed to it, and the softmax and top-k see the kept experts
only. The masked model then computes what the model without the expert computes, which
``pk.shrink`` verifies after slicing the expert off (:func:`drop_experts` patches the counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import ConfigError, TargetError
from ..masks import MASKED_FORWARD, get_mask

#: config fields holding the number of routed experts, by model family
COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")


def num_experts(module: nn.Module) -> int | None:
    value = module.__dict__.get("num_experts")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def is_expert_weight(module: nn.Module, attr: str) -> bool:
    """``module.<attr>`` is a 3-D parameter with one slice per expert of an experts module."""
    p = module._parameters.get(attr)
    count = num_experts(module)
    return p is not None and p.dim() == 3 and count is not None and p.shape[0] == count


def _is_experts(module: nn.Module) -> bool:
    return any(is_expert_weight(module, a) for a in module._parameters)


def _is_router(module: nn.Module, count: int | None = None) -> bool:
    """A router: a 2-D ``weight`` with one row per expert, and a ``num_experts`` attribute."""
    w = module._parameters.get("weight")
    count = num_experts(module) if count is None else count
    return (
        w is not None
        and w.dim() == 2
        and w.shape[0] == count
        and num_experts(module) == count
        and not _is_experts(module)
    )


@dataclass(frozen=True, eq=False)
class MoE:
    """One MoE block: its name, the block, its router and its experts, and top-k."""

    name: str
    block: nn.Module
    router_name: str
    router: nn.Module
    experts_name: str
    experts: nn.Module
    top_k: int

    @property
    def count(self) -> int:
        return int(self.router.weight.shape[0])


def find_moe(model: nn.Module) -> list[MoE]:
    """Every MoE block of ``model`` (experts module + router siblings), in module order."""
    found = []
    for name, block in model.named_modules():
        children = dict(block.named_children())
        experts = [(n, c) for n, c in children.items() if _is_experts(c)]
        if len(experts) != 1:
            continue
        e_name, e_mod = experts[0]
        count = num_experts(e_mod)
        routers = [(n, c) for n, c in children.items() if c is not e_mod and _is_router(c, count)]
        if len(routers) != 1:
            continue
        r_name, router = routers[0]
        top_k = next(
            (
                v
                for v in (router.__dict__.get("top_k"), block.__dict__.get("top_k"))
                if isinstance(v, int)
            ),
            None,
        )
        if top_k is None:
            top_k = getattr(getattr(model, "config", None), "num_experts_per_tok", None)
        if not isinstance(top_k, int):
            continue
        prefix = f"{name}." if name else ""
        found.append(MoE(name, block, prefix + r_name, router, prefix + e_name, e_mod, top_k))
    return found


def expert_groups(model: nn.Module) -> list[Any]:
    """One :class:`~prunekit.structure.Group` per MoE block, unit ``e`` = expert ``e``: its
    slice of every 3-D expert weight and its router row (and router bias, if any)."""
    from .groups import Group, Slot

    groups = []
    for moe in find_moe(model):
        slots, index = [], []
        ar = torch.arange(moe.count).unsqueeze(1)  # [experts, 1]
        for attr, p in moe.experts._parameters.items():  # 3-D weights, 2-D biases
            if p is not None and p.dim() >= 2 and p.shape[0] == moe.count:
                slots.append(Slot(f"{moe.experts_name}.{attr}", moe.experts, attr, 0))
                index.append(ar)
        for attr in ("weight", "bias"):
            p = moe.router._parameters.get(attr)
            if p is not None and p.shape[0] == moe.count:
                slots.append(Slot(f"{moe.router_name}.{attr}", moe.router, attr, 0))
                index.append(ar)
        group = Group(moe.name, "expert", slots, index)
        group.info.update(moe=moe)
        groups.append(group)
    return groups


def check_top_k(groups: list[Any], pruned: list[torch.Tensor]) -> None:
    """Refuse (before any mask) to leave a MoE block fewer experts than it routes each token to."""
    for g, mask in zip(groups, pruned, strict=True):
        moe: MoE = g.info["moe"]
        left = g.units - int((mask | g.dead()).sum())
        if left < moe.top_k:
            raise ConfigError(
                f"pruning would leave {left} expert(s) in {moe.name}, fewer than the "
                f"{moe.top_k} each token is routed to (top-k); lower the sparsity to at most "
                f"{(g.units - moe.top_k) / g.units:.3g}"
            )


# -- the router's masked forward -----------------------------------------------------------------
class _DeadLogits(TorchFunctionMode):
    """Inside a router's forward: the logits ``linear(x, router.weight)`` of dead experts become
    ``-inf``."""

    def __init__(self, weight: torch.Tensor, dead: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.dead, self.hits = weight, dead, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        w = args[1] if len(args) > 1 else kwargs.get("weight")
        if func is F.linear and w is self.weight:
            self.hits += 1
            out = out.masked_fill(self.dead, float("-inf"))
        return out


class _RouterMeta(type):
    def __instancecheck__(cls, module: object) -> bool:
        return isinstance(module, nn.Module) and _is_router(module)


class Router(metaclass=_RouterMeta):
    """``isinstance(m, Router)``: ``m`` is a MoE router (see :func:`find_moe`), whose masked
    forward routes no token to a masked expert (through copies, saving and loading)."""


def masked_router(module: nn.Module, args: tuple, out: Any) -> Any:
    """Forward hook: route no token to an expert whose router row is masked off (``None``:
    keep ``out``)."""
    mask = get_mask(module, "weight")
    if mask is None:
        return None
    dead = ~mask.any(1)  # [experts]
    if not bool(dead.any()):
        return None
    mode = _DeadLogits(module.weight, dead)
    with mode:
        rerun = type(module).forward(module, *args)
    if mode.hits != 1:
        raise TargetError(
            f"the router {type(module).__name__} does not compute its logits as one "
            "F.linear(x, self.weight); its masked experts cannot be taken out of routing"
        )
    return rerun


MASKED_FORWARD[Router] = masked_router


# -- after slicing -------------------------------------------------------------------------------
#: config fields of the routed experts' MLP width, and of the shared expert's
EXPERT_WIDTH_FIELDS = ("moe_intermediate_size", "intermediate_size")
SHARED_WIDTH_FIELDS = ("shared_expert_intermediate_size",)


def _sizes(moe: MoE) -> tuple[int, int, int]:
    """(experts, hidden, intermediate) of a block's sliced tensors."""
    down = moe.experts._parameters["down_proj"]
    if moe.experts.__dict__.get("is_transposed", False):  # [E, I, H]
        return down.shape[0], down.shape[2], down.shape[1]
    return down.shape[0], down.shape[1], down.shape[2]  # [E, H, I]


def patch_moe(model: nn.Module, moes: list[MoE]) -> None:
    """After slicing, make the size attributes of every MoE block (found before slicing) agree
    with its tensors, and the model's config where one value holds for every block: expert
    count, hidden width seen by the router, the experts' and the shared expert's MLP widths."""
    found: dict[str, set[int]] = {"count": set(), "inter": set(), "shared": set()}
    old_inter = set()
    for moe in moes:
        if "down_proj" not in moe.experts._parameters:
            continue
        old_inter.add(moe.experts.__dict__.get("intermediate_dim"))
        count, hidden, inter = _sizes(moe)
        for m, attrs in (
            (moe.experts, {"num_experts": count, "hidden_dim": hidden, "intermediate_dim": inter}),
            (moe.router, {"num_experts": count, "hidden_dim": moe.router.weight.shape[1]}),
            (moe.block, {"num_experts": count}),
        ):
            for attr, value in attrs.items():
                if isinstance(m.__dict__.get(attr), int):
                    setattr(m, attr, int(value))
        found["count"].add(int(count))
        found["inter"].add(int(inter))
        for child in moe.block.children():
            up = getattr(child, "up_proj", None)
            if child not in (moe.experts, moe.router) and isinstance(up, nn.Linear):
                found["shared"].add(up.out_features)
    config = getattr(model, "config", None)
    if config is None or not moes:
        return
    _set_uniform(config, COUNT_FIELDS, found["count"], lambda old, new: old > new)
    _set_uniform(config, EXPERT_WIDTH_FIELDS, found["inter"], lambda old, new: old in old_inter)
    _set_uniform(config, SHARED_WIDTH_FIELDS, found["shared"], lambda old, new: True)


def _set_uniform(config: Any, fields: tuple[str, ...], values: set[int], when: Any) -> None:
    """Write the one value of ``values`` into the first of ``fields`` the config has (where
    ``when(old, new)``); several values cannot be written (the shape manifest holds them)."""
    if len(values) != 1:
        return
    (new,) = values
    for fld in fields:
        old = getattr(config, fld, None)
        if isinstance(old, int) and not isinstance(old, bool):
            if when(old, new):
                setattr(config, fld, new)
            return


def expert_modules(model: nn.Module, include: Any = None, exclude: Any = None) -> set[int]:
    """``id()`` of the experts modules that structured pruning may cut, as selected by the
    ``include``/``exclude`` of the job (module names, regexes, types)."""
    from ..targets import selected

    return selected(model, {id(m) for m in model.modules() if _is_experts(m)}, include, exclude)


#: grouped matmul kernels need every row of their operands to start on 16 bytes
KERNEL_ALIGNMENT_BYTES = 16


def alignment(group: Any) -> int:
    """The multiple a group's kept width must be: a channel of fused expert weights (run by
    ``grouped_mm``, which needs 16-byte aligned strides) keeps 16 bytes' worth of channels."""
    sizes = [
        s.tensor.element_size()
        for s in group.slots
        if s.dim != 0 and is_expert_weight(s.module, s.attr)
    ]
    return max(KERNEL_ALIGNMENT_BYTES // min(sizes), 1) if sizes else 1
