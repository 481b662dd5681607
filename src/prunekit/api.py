"""The one-call API: ``prune``, ``finalize``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .config import PruneConfig
from .granularity import Granularity
from .masks import bake
from .pruner import Pruner
from .targets import Selector


def prune(
    model: nn.Module,
    sparsity: float | None = None,
    granularity: str | Granularity = "unstructured",
    criterion: str = "magnitude",
    scope: str = "layer",
    include: Sequence[Selector] | Selector | None = None,
    exclude: Sequence[Selector] | Selector | None = None,
    seed: int = 0,
    data: Iterable[Any] | None = None,
    example_inputs: Any = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    progress: bool = False,
) -> Pruner:
    """Prune ``model`` once, now: masks are attached and enforced; returns the :class:`Pruner`.

    Example: ``pk.prune(model, granularity="2:4")`` or ``pk.prune(model, 0.9, scope="global")``.
    Structured granularities (``"channel"``, ``"head"``) trace the model on ``example_inputs``;
    ``loss_fn(output, batch)`` serves gradient criteria (``"taylor"``) with ``data``.
    Data-aware criteria (``"wanda"``, ``"sparsegpt"``, ...) take calibration batches as ``data``
    (tensors, tuples or dicts of keyword arguments); ``"obd"`` too uses ``loss_fn``, or the model's
    own loss.
    """
    config = PruneConfig(
        sparsity=sparsity,
        granularity=granularity,
        criterion=criterion,
        scope=scope,
        include=include,
        exclude=exclude,
        seed=seed,
    )
    pruner = Pruner(
        model,
        config,
        data=data,
        example_inputs=example_inputs,
        loss_fn=loss_fn,
        progress=progress,
    )
    pruner.step()
    return pruner


def finalize(model: nn.Module) -> nn.Module:
    """Bake the masks into the weights and drop them. ``state_dict`` keys stay the unpruned ones."""
    return bake(model)
