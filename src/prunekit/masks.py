"""Masks: stored on the model, only ever shrinking, and enforced through training.

A mask is a boolean, non-persistent buffer ``<param>_pk_mask`` on the pruned module. Being a buffer,
it follows ``.to()``, ``deepcopy`` and pickling; being non-persistent, it leaves
``model.state_dict()`` with exactly the unpruned model's keys.

Enforcement costs nothing in the forward pass:

* the weight is zeroed in place whenever its mask changes;
* a post-accumulate-grad hook zeroes the pruned entries of ``param.grad``;
* one global optimizer step post-hook re-zeroes masked parameters after every ``step()`` of any
  optimizer, so momentum, weight decay and optimizers created before pruning cannot revive them.

A copy made by ``deepcopy`` or pickling is re-armed on its first forward call by a cheap
forward pre-hook (its arm token does not survive copying, by design).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from .errors import ConfigError

SUFFIX = "_pk_mask"
_TOKEN = "_pk_armed"
_HOOK_ID = "_pk_arm_hook"

#: armed parameter -> (its mask, its grad-hook handle)
_ENFORCED: WeakIdKeyDictionary = WeakIdKeyDictionary()


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
        param.grad.mul_(entry[0])


@torch.no_grad()
def _remask_after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    params, masks = [], []
    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = _ENFORCED.get(p)
            if entry is not None:
                params.append(p)
                masks.append(entry[0])
    if params:
        torch._foreach_mul_(params, masks)


register_optimizer_step_post_hook(_remask_after_step)


def mask_names(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(parameter name, mask) for each masked parameter of ``module`` itself."""
    for buf_name, buf in module.named_buffers(recurse=False):
        if buf_name.endswith(SUFFIX):
            yield buf_name[: -len(SUFFIX)], buf


def get_mask(module: nn.Module, param: str) -> torch.Tensor | None:
    return module._buffers.get(param + SUFFIX)


def arm(module: nn.Module) -> None:
    """Enforce every mask of ``module``: zero the weights and hook grads and optimizers."""
    with torch.no_grad():
        for pname, mask in mask_names(module):
            p = getattr(module, pname)
            p.mul_(mask)
            old = _ENFORCED.get(p)
            if old is None or old[0] is not mask:
                if old is not None:
                    old[1].remove()
                _ENFORCED[p] = (mask, p.register_post_accumulate_grad_hook(_mask_grad))
    module.__dict__.setdefault(_TOKEN, _ArmToken()).armed = True


def _arm_on_forward(module: nn.Module, args) -> None:
    if not module.__dict__[_TOKEN].armed:
        arm(module)


def shrink_mask(module: nn.Module, param: str, keep: torch.Tensor) -> torch.Tensor:
    """AND ``keep`` into the mask of ``module.<param>`` (creating it) and enforce it.

    ``keep`` has the parameter's shape. Returns the updated mask.
    """
    p = getattr(module, param)
    if keep.shape != p.shape:
        raise ConfigError(f"mask shape {tuple(keep.shape)} does not match {param} {tuple(p.shape)}")
    keep = keep.to(device=p.device, dtype=torch.bool)
    mask = get_mask(module, param)
    if mask is None:
        module.register_buffer(param + SUFFIX, keep.clone(), persistent=False)
        if _HOOK_ID not in module.__dict__:
            module.__dict__[_HOOK_ID] = module.register_forward_pre_hook(_arm_on_forward).id
    else:
        mask.logical_and_(keep)
    arm(module)
    return get_mask(module, param)


def unmask(module: nn.Module) -> None:
    """Remove the masks of ``module`` (the weights keep their zeros) and stop enforcing them."""
    for pname, _ in list(mask_names(module)):
        entry = _ENFORCED.pop(getattr(module, pname), None)
        if entry is not None:
            entry[1].remove()
        del module._buffers[pname + SUFFIX]
    hook_id = module.__dict__.pop(_HOOK_ID, None)
    if hook_id is not None:
        module._forward_pre_hooks.pop(hook_id, None)
    module.__dict__.pop(_TOKEN, None)


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
