"""The one-call API: ``prune``, ``finalize``."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .config import PruneConfig
from .masks import bake
from .pruner import Pruner


def prune(
    model: nn.Module,
    config: PruneConfig | float | None = None,
    /,
    *,
    data: Iterable[Any] | None = None,
    example_inputs: Any = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    progress: bool = False,
    **fields: Any,
) -> Pruner:
    """Prune ``model`` once, now: masks are attached and enforced; returns the :class:`Pruner`.

    ``pk.prune(model, PruneConfig(...))``, ``pk.prune(model, 0.9, scope="global")`` or
    ``pk.prune(model, granularity="2:4")``: the second argument is a config or a sparsity, and
    every keyword of :class:`PruneConfig` (sparsity, granularity, criterion, scope, schedule,
    include, exclude, seed) may be given (overriding the config's). Structured granularities
    (``"channel"``, ``"head"``) trace the model on ``example_inputs``. Data-aware criteria
    (``"wanda"``, ``"sparsegpt"``, ...) take calibration batches as ``data`` (tensors, tuples or
    dicts of keyword arguments); gradient criteria (``"taylor"``, ``"obd"``) use
    ``loss_fn(output, batch)``, or the model's own loss.
    """
    pruner = Pruner(
        model,
        config,
        data=data,
        example_inputs=example_inputs,
        loss_fn=loss_fn,
        progress=progress,
        **fields,
    )
    pruner.step()
    return pruner


def _signature() -> inspect.Signature:
    """``prune``'s signature with PruneConfig's fields spelled out (for help() and IDEs)."""
    sig = inspect.signature(prune)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    for f in dataclasses.fields(PruneConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default))
    return sig.replace(parameters=params)


prune.__signature__ = _signature()  # type: ignore[attr-defined]


def finalize(model: nn.Module) -> nn.Module:
    """Bake the masks into the weights and drop them. ``state_dict`` keys stay the unpruned ones."""
    return bake(model)
