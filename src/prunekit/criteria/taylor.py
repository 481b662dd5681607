"""First-order Taylor importance (Molchanov et al. 2019): |w · ∂L/∂w|.

Gradients are accumulated over the ``data`` batches with ``loss_fn(output, batch)``, or with the
model's own loss (``output.loss`` of a Hugging Face model given labels, or a scalar output). A
group's unit sums the element scores of all its members.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..targets import Target
from .base import CRITERIA, Criterion, ScoreContext


def _loss(output: Any, batch: Any, ctx: ScoreContext) -> torch.Tensor:
    if ctx.loss_fn is not None:
        return ctx.loss_fn(output, batch)
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if loss is None and isinstance(output, torch.Tensor) and output.dim() == 0:
        loss = output
    if not isinstance(loss, torch.Tensor):
        raise ConfigError(
            "criterion 'taylor' needs a loss: pass loss_fn=<fn(output, batch) -> scalar>, or "
            "batches for which the model returns one (e.g. a Hugging Face model given labels)"
        )
    return loss


@CRITERIA.register("taylor")
class Taylor(Criterion):
    requires_data = True

    def collect(self, targets: list[Target], ctx: ScoreContext) -> None:
        from ..structure.graph import call_model

        model = ctx.model
        params = {t.qualname: t.weight for t in targets}
        saved = {n: p.grad for n, p in params.items()}
        flags = {n: p.requires_grad for n, p in params.items()}
        acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        try:
            for p in params.values():
                p.requires_grad_(True)
            with torch.enable_grad():
                for batch in ctx.data or ():
                    for p in params.values():
                        p.grad = None
                    _loss(call_model(model, batch), batch, ctx).backward()
                    for n, p in params.items():
                        if p.grad is not None:
                            acc[n] += p.grad.float()
        finally:
            for n, p in params.items():
                p.grad = saved[n]
                p.requires_grad_(flags[n])
        for t in targets:
            ctx.stats[t.qualname] = {"taylor": (acc[t.qualname] * t.weight.detach().float()).abs()}

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        stats = ctx.stats.get(target.qualname, {})
        if "taylor" not in stats:
            raise ConfigError(f"criterion 'taylor' has no gradients for {target.qualname}")
        return target.to_matrix(stats["taylor"])
