"""Masks: stored on the model, only ever shrinking, and enforced through training.

A mask is a boolean, non-persistent buffer ``<param>_pk_mask`` on the pruned module. Being a buffer,
it follows ``.to()``, ``deepcopy`` and pickling; being non-persistent, it leaves
``model.state_dict()`` with exactly the unpruned model's keys.

Enforcement costs nothing in the forward pass and one masked multiply of the gradient per step:

* the weight is zeroed in place whenever its mask changes, and after ``load_state_dict``;
* a post-accumulate-grad hook zeroes the pruned entries of ``param.grad``;
* one global optimizer step post-hook keeps pruned weights at exactly zero after every ``step()``
  of any optimizer. For optimizers whose update is elementwise (SGD, Adam, AdamW, ...), a zero
  gradient, zero state and zero weight give a zero update, so after each mask change (or new
  optimizer state) the hook zeroes the pruned entries of the weight and of its state once, and then
  has nothing to do. Any other optimizer (Muon, Shampoo, a subclass with its own ``step``) has its
  masked weights re-zeroed after every step.

A copy made by ``deepcopy`` or pickling is re-armed on its first forward call by a cheap
forward pre-hook (its arm token does not survive copying, by design).

Module types whose output is not right with zeroed weights alone register a forward hook in
:data:`MASKED_FORWARD` (the structure package: a masked LayerNorm normalises over its kept
channels only); every masked module of that type gets it. Masking the ``v`` of a weight-norm
parametrization (``w = g * v / ||v||``) rescales its ``g``, so that the kept weights stay
what they were.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import NamedTuple
from weakref import WeakKeyDictionary

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.hooks import RemovableHandle
from torch.utils.weak import WeakIdKeyDictionary

from .errors import ConfigError

SUFFIX = "_pk_mask"
#: per-module dict ``param -> granularity spec`` recorded when prunekit prunes it
INFO = "_pk_info"
_TOKEN = "_pk_armed"
_HOOK_IDS = "_pk_hook_ids"

#: optimizers whose update of a weight with zero gradient and zero state is zero
ELEMENTWISE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Rprop, torch.optim.Adagrad,
    torch.optim.Adadelta, torch.optim.ASGD,
)  # fmt: skip


class _Enforced(NamedTuple):
    mask: torch.Tensor
    #: the mask viewed as uint8: multiplying by it is about twice as fast as by a bool tensor
    factor: torch.Tensor
    grad_hook: RemovableHandle | None  # None: a frozen parameter
    #: changes whenever the mask changes, so optimizers know to clean their state again
    version: int


_versions = itertools.count()

#: module type -> forward hook ``(module, args, output) -> output`` applied while it is masked
MASKED_FORWARD: dict[type[nn.Module], Callable[..., object]] = {}
#: armed parameter -> its enforcement
_ENFORCED: WeakIdKeyDictionary = WeakIdKeyDictionary()
#: optimizer -> parameter -> (mask version, state dict) last cleaned
_CLEAN: WeakKeyDictionary = WeakKeyDictionary()


class _ArmToken:
    """Marks a module's masks as enforced. Copies come back unarmed, so copies re-arm."""

    def __init__(self) -> None:
        self.armed = False

    def __deepcopy__(self, memo: dict) -> _ArmToken:
        return _ArmToken()

    def __reduce__(self):
        return (_ArmToken, ())


def _mask_grad(param: torch.Tensor) -> None:
    entry = _ENFORCED.get(param)
    if entry is not None and param.grad is not None:
        param.grad.mul_(entry.factor)


def _needs_remask(optimizer: torch.optim.Optimizer, p: torch.Tensor, entry: _Enforced) -> bool:
    """False once an elementwise optimizer's state for ``p`` is clean under the current mask."""
    # armed while frozen, so no gradient hook (it cannot be registered then): if the parameter
    # was unfrozen since, its gradient is not masked and the weight is re-zeroed after every step
    if type(optimizer) not in ELEMENTWISE_OPTIMIZERS or entry.grad_hook is None:
        return True
    state = optimizer.state.get(p)
    clean = _CLEAN.setdefault(optimizer, WeakIdKeyDictionary())
    last = clean.get(p)
    if last is not None and last[0] == entry.version and last[1] is state:
        return False
    for value in (state or {}).values():
        if isinstance(value, torch.Tensor) and value.shape == p.shape:
            value.mul_(entry.factor)
    clean[p] = (entry.version, state)
    return True


@torch.no_grad()
def _after_optimizer_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    params, masks = [], []
    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = _ENFORCED.get(p)
            if entry is not None and _needs_remask(optimizer, p, entry):
                params.append(p)
                masks.append(entry.factor)
    if params:
        torch._foreach_mul_(params, masks)


register_optimizer_step_post_hook(_after_optimizer_step)


def mask_names(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(parameter name, mask) for each masked parameter of ``module`` itself."""
    for buf_name, buf in module.named_buffers(recurse=False):
        if buf_name.endswith(SUFFIX):
            yield buf_name[: -len(SUFFIX)], buf


def get_mask(module: nn.Module, param: str) -> torch.Tensor | None:
    return module._buffers.get(param + SUFFIX)


def granularity_of(module: nn.Module, param: str) -> str | None:
    """The granularity spec a parameter was pruned with, if prunekit pruned it."""
    return module.__dict__.get(INFO, {}).get(param)


def record_granularity(module: nn.Module, param: str, spec: str) -> None:
    """Remember the granularity ``module.<param>`` was pruned with (for reports and checks)."""
    module.__dict__.setdefault(INFO, {})[param] = spec


#: elements per block of :func:`mul_mask_`
_BLOCK = 1 << 20


def mul_mask_(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``t *= mask`` in place (``mask``: bool, ``t``'s shape), by its uint8 view (about twice as
    fast as by the bool), on CPU a block of rows at a time: in one call the mixed-dtype multiply
    makes a float temporary as large as ``t``, whose fresh pages cost several times the multiply
    on an embedding table."""
    factor = mask.view(torch.uint8)
    if t.device.type != "cpu" or t.dim() == 0 or t.numel() <= _BLOCK:
        return t.mul_(factor)
    rows = max(1, _BLOCK // max(1, t[0].numel()))
    for part, f in zip(t.split(rows), factor.split(rows), strict=True):
        part.mul_(f)
    return t


def arm(module: nn.Module, only: str | None = None) -> None:
    """Enforce every mask of ``module`` (``only``: the mask of that parameter, on an armed
    module): zero the weights, hook grads, flag optimizer state."""
    with torch.no_grad():
        for pname, mask in mask_names(module):
            if only is not None and pname != only:
                continue
            p = getattr(module, pname)
            mul_mask_(p, mask)
            old = _ENFORCED.get(p)
            hook = old.grad_hook if old is not None and old.mask is mask else None
            if hook is None or not p.requires_grad:
                if old is not None and old.grad_hook is not None:
                    old.grad_hook.remove()
                # a frozen parameter (ViTMAE's fixed position table) takes no gradient
                hook = p.register_post_accumulate_grad_hook(_mask_grad) if p.requires_grad else None
            _ENFORCED[p] = _Enforced(mask, mask.view(torch.uint8), hook, next(_versions))
    module.__dict__.setdefault(_TOKEN, _ArmToken()).armed = True


def is_armed(module: nn.Module) -> bool:
    """The masks of ``module`` are enforced (false on a copy until its first forward)."""
    token = module.__dict__.get(_TOKEN)
    return token is not None and token.armed


def _arm_on_forward(module: nn.Module, args) -> None:
    if not module.__dict__[_TOKEN].armed:
        arm(module)


def _remask_after_load(module: nn.Module, incompatible_keys) -> None:
    arm(module)


def shrink_mask(module: nn.Module, param: str, keep: torch.Tensor) -> torch.Tensor:
    """AND ``keep`` into the mask of ``module.<param>`` (creating it) and enforce it.

    ``keep`` has the parameter's shape. Returns the updated mask.
    """
    p = getattr(module, param)
    if keep.shape != p.shape:
        raise ConfigError(f"mask shape {tuple(keep.shape)} does not match {param} {tuple(p.shape)}")
    keep = keep.to(device=p.device, dtype=torch.bool)
    renorm = _weight_norm_of(module, param)
    mask = get_mask(module, param)
    if mask is None:
        module.register_buffer(param + SUFFIX, keep.clone(), persistent=False)
        if _HOOK_IDS not in module.__dict__:
            ids = (
                module.register_forward_pre_hook(_arm_on_forward).id,
                module.register_load_state_dict_post_hook(_remask_after_load).id,
            )
            from .structure import masked_norm  # noqa: F401  registers masked LayerNorm forwards

            fix = next((h for t, h in MASKED_FORWARD.items() if isinstance(module, t)), None)
            if fix is not None:
                ids += (module.register_forward_hook(fix).id,)
            module.__dict__[_HOOK_IDS] = ids
    else:
        mask.logical_and_(keep)
    arm(module, param if is_armed(module) else None)
    if renorm is not None:
        renorm()
    return get_mask(module, param)


def _weight_norm_of(module: nn.Module, param: str) -> Callable[[], None] | None:
    """Where ``module.<param>`` is the ``v`` of a weight-norm parametrization (``w = g * v /
    ||v||``, the norm over every dimension but ``dim``): a function to call once ``v`` is masked,
    that scales ``g`` by ``||v masked|| / ||v||`` so that every kept weight stays what it was."""
    from torch.nn.utils.parametrize import ParametrizationList

    if not isinstance(module, ParametrizationList) or param != "original1":
        return None
    dim = getattr(module[0], "dim", None)
    if type(module[0]).__name__ != "_WeightNorm" or not isinstance(dim, int):
        return None
    v, g = module.original1, module.original0
    before = torch.norm_except_dim(v.detach(), 2, dim)

    @torch.no_grad()
    def rescale() -> None:
        after = torch.norm_except_dim(v.detach(), 2, dim)
        g.mul_(torch.where(before > 0, after / before, 1.0).reshape(g.shape).to(g.dtype))

    return rescale


def unmask(module: nn.Module) -> None:
    """Remove the masks of ``module`` (the weights keep their zeros) and stop enforcing them."""
    for pname, _ in list(mask_names(module)):
        entry = _ENFORCED.pop(getattr(module, pname), None)
        if entry is not None and entry.grad_hook is not None:
            entry.grad_hook.remove()
        del module._buffers[pname + SUFFIX]
    hook_ids = module.__dict__.pop(_HOOK_IDS, None)
    if hook_ids is not None:
        module._forward_pre_hooks.pop(hook_ids[0], None)
        module._load_state_dict_post_hooks.pop(hook_ids[1], None)
        if len(hook_ids) > 2:
            module._forward_hooks.pop(hook_ids[2], None)
    module.__dict__.pop(_TOKEN, None)


@torch.no_grad()
def bake(model: nn.Module) -> nn.Module:
    """Multiply every mask into its weight and drop the masks; ``state_dict`` keys unchanged."""
    for _, module, pname, mask in list(MaskState(model).items()):
        getattr(module, pname).mul_(mask)
        unmask(module)
    return model


class MaskState:
    """A view of a model's masks by parameter name, with its own ``state_dict``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def items(self) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
        """(qualified parameter name, module, parameter name, mask) for every mask."""
        for mod_name, module in self.model.named_modules():
            for pname, mask in mask_names(module):
                yield (f"{mod_name}.{pname}" if mod_name else pname), module, pname, mask

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {q: m for q, _, _, m in self.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {q: m.detach().clone() for q, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore masks (ANDed with any present). All names and shapes are checked first."""
        modules = dict(self.model.named_modules())
        plan = []
        for qualname, mask in state.items():
            mod_name, _, pname = qualname.rpartition(".")
            module = modules.get(mod_name)
            p = getattr(module, pname, None) if module is not None else None
            if not isinstance(p, torch.Tensor):
                raise ConfigError(f"mask {qualname!r} names no parameter of this model")
            if tuple(mask.shape) != tuple(p.shape):
                raise ConfigError(
                    f"mask {qualname!r} has shape {tuple(mask.shape)}, "
                    f"parameter has {tuple(p.shape)}"
                )
            plan.append((module, pname, mask))
        for module, pname, mask in plan:
            shrink_mask(module, pname, mask)
