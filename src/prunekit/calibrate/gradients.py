"""Gradients of the loss over calibration batches (Taylor, OBD)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import track
from ..targets import Target
from .batches import as_batches, calibration_mode, model_device, run_batch


def model_loss(output: Any, batch: Any, loss_fn: Callable[[Any, Any], torch.Tensor] | None) -> Any:
    """The scalar loss of one batch: ``loss_fn(output, batch)``, else the model's own loss
    (``output.loss``, ``output["loss"]``, or a scalar output)."""
    if loss_fn is not None:
        loss = loss_fn(output, batch)
    elif getattr(output, "loss", None) is not None:
        loss = output.loss
    elif isinstance(output, Mapping) and output.get("loss") is not None:
        loss = output["loss"]
    else:
        loss = output
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ConfigError(
            "this criterion needs a loss: pass loss_fn=<fn(output, batch) -> scalar>, or batches "
            "from which the model computes its own loss (e.g. Hugging Face labels=...)"
        )
    return loss.reshape(())


def gradient_sums(
    model: nn.Module,
    targets: list[Target],
    data: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    progress: bool = False,
    *,
    square: bool,
) -> dict[str, torch.Tensor]:
    """Σ over batches of ∂loss/∂W (``square=False``, for Taylor) or of (∂loss/∂W)² (``square=True``,
    a diagonal empirical Fisher, unscaled, for OBD), per target weight.

    Gradients are taken with ``torch.autograd.grad``: the parameters' ``.grad`` are untouched.
    """
    raw = [data] if isinstance(data, (torch.Tensor, Mapping)) else list(data or [])
    batches = as_batches(raw)
    device = model_device(model)
    params = [t.weight for t in targets]
    flags = [p.requires_grad for p in params]
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad(), calibration_mode(model):
            for i, batch in enumerate(track(batches, "gradients", progress)):
                loss = model_loss(run_batch(model, batch, i, device), raw[i], loss_fn)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for s, g in zip(sums, grads, strict=True):
                    if g is not None:
                        g = g.detach().float()
                        s.add_(g.square() if square else g)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for s in sums:
            dist.all_reduce(s)
    return {t.qualname: s for t, s in zip(targets, sums, strict=True)}
