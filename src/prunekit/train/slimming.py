"""Network slimming (Liu et al. 2017): an L1 penalty on BatchNorm scale factors γ during training,
so that unimportant channels' γ shrink towards zero for the ``"bn-scaling"`` criterion to find.

Either add the penalty to the loss::

    loss = criterion(model(x), y) + bn_l1_penalty(model, 1e-4)

or, as the paper's code does, add its subgradient after ``backward()``::

    loss.backward(); add_bn_l1_subgradient(model, 1e-4); optimizer.step()
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

_NORMS = (nn.modules.batchnorm._BatchNorm,)


def bn_scales(model: nn.Module) -> list[torch.Tensor]:
    """The γ (weight) of every affine BatchNorm layer in ``model``."""
    return [m.weight for m in model.modules() if isinstance(m, _NORMS) and m.weight is not None]


def _check(model: nn.Module, strength: float) -> list[torch.Tensor]:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or strength < 0:
        raise ConfigError(f"strength must be a number >= 0, got {strength!r}")
    scales = bn_scales(model)
    if not scales:
        raise ConfigError(f"{type(model).__name__} has no affine BatchNorm layer to regularise")
    return scales


def bn_l1_penalty(model: nn.Module, strength: float = 1e-4) -> torch.Tensor:
    """``strength · Σ|γ|`` over all BatchNorm layers: a differentiable scalar to add to the loss."""
    scales = _check(model, strength)
    return strength * torch.stack([g.abs().sum() for g in scales]).sum()


@torch.no_grad()
def add_bn_l1_subgradient(model: nn.Module, strength: float = 1e-4) -> None:
    """Add ``strength · sign(γ)`` to each γ's gradient (call between backward and step)."""
    for g in _check(model, strength):
        if g.grad is None:
            g.grad = torch.zeros_like(g)
        g.grad.add_(torch.sign(g), alpha=strength)
