"""What a shrunk model was before :func:`~prunekit.structure.shrink.shrink`: each resized
parameter's original shape and the model's original parameter count, for reports.

The records live in the modules' ``__dict__`` (so deep copies and later shrinks carry them; a
second shrink keeps the first original) and travel through checkpoints in the saved report.
"""

from __future__ import annotations

from typing import Any

from torch import nn

#: per-module dict ``param -> shape before the first shrink``
SHAPES = "_pk_shape_before"
#: on the root module: its parameter count before the first shrink
PARAMS = "_pk_params_before"


def record(model: nn.Module, small: nn.Module, memo: dict[int, Any]) -> None:
    """Note on ``small`` (the shrunk copy of ``model``; ``memo``: id of an original object ->
    its copy) the original shape of every parameter shrink resized, and ``model``'s size."""
    for module in model.modules():
        copied = memo.get(id(module))
        if not isinstance(copied, nn.Module):
            continue  # a block that went
        for pname, p in module._parameters.items():
            q = copied._parameters.get(pname)
            if p is not None and q is not None and q.shape != p.shape:
                copied.__dict__.setdefault(SHAPES, {}).setdefault(pname, list(p.shape))
    before = params_before(model)
    small.__dict__[PARAMS] = (
        before if before is not None else sum(p.numel() for p in model.parameters())
    )


def shape_before(module: nn.Module, param: str) -> list[int] | None:
    """``module.<param>``'s shape before shrink resized it; None if it was not resized."""
    return module.__dict__.get(SHAPES, {}).get(param)


def params_before(model: nn.Module) -> int | None:
    """``model``'s parameter count before its first shrink; None if it was not shrunk."""
    return model.__dict__.get(PARAMS)


def restore(model: nn.Module, shapes: dict[str, list[int]], params: int | None) -> None:
    """Re-attach records read from a checkpoint (``shapes``: qualified parameter name -> shape,
    names already checked against ``model``)."""
    for name, shape in shapes.items():
        mod_name, _, param = name.rpartition(".")
        model.get_submodule(mod_name).__dict__.setdefault(SHAPES, {})[param] = list(shape)
    if params is not None:
        model.__dict__[PARAMS] = params
