"""Calibration batches: normalising, validating and running them.

A calibration batch is anything the model's forward takes: a tensor (``model(x)``), a tuple
(``model(*batch)``) or a dict of keyword arguments (``model(**batch)``, e.g. Hugging Face
``input_ids`` / ``attention_mask``). ``data`` is an iterable of batches; a single tensor or dict
is taken as one batch. :func:`as_batches` materialises the data once into a list, so that every
later pass (a dense scoring pass, then the pruning pass) sees the same batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..outputs import map_tensors
from ..targets import Target

#: one batch as (positional args, keyword args)
Batch = tuple[tuple[Any, ...], dict[str, Any]]


def is_normalised(data: Any) -> bool:
    """True when ``data`` is already the output of :func:`as_batches`."""
    return isinstance(data, list) and all(
        isinstance(b, tuple) and len(b) == 2 and isinstance(b[1], dict) for b in data
    )


def as_batches(data: Any) -> list[Batch]:
    """Normalise calibration ``data`` to a list of ``(args, kwargs)``; raise on bad batches.

    Refused with :class:`ConfigError`: None, a non-iterable, no batch at all (an iterator that an
    earlier pass already consumed says so), a batch of another type, a batch without a tensor or
    with an empty tensor, and floating-point tensors holding NaN or inf.
    """
    if data is None:
        raise ConfigError("calibration data is None: pass data=<iterable of model inputs>")
    if is_normalised(data) and data:
        return data
    if isinstance(data, (torch.Tensor, Mapping)):
        data = [data]
    one_shot = isinstance(data, Iterator)
    try:
        items = list(data)
    except TypeError:
        raise ConfigError(
            f"calibration data must be an iterable of batches, got {type(data).__name__}"
        ) from None
    if not items:
        if one_shot:
            raise ConfigError(
                "calibration data is empty: the iterator yielded no batch (a generator can be "
                "read only once; a second pass finds it exhausted): pass a list of batches, or "
                "normalise it once with prunekit.calibrate.as_batches(data)"
            )
        raise ConfigError("calibration data is empty: pass at least one batch")
    return [_normalise(i, b) for i, b in enumerate(items)]


def _normalise(i: int, b: Any) -> Batch:
    if isinstance(b, torch.Tensor):
        args, kwargs = (b,), {}
    elif isinstance(b, (tuple, list)):
        args, kwargs = tuple(b), {}
    elif isinstance(b, Mapping):
        args, kwargs = (), dict(b)
    else:
        raise ConfigError(
            f"calibration batch {i} is a {type(b).__name__}; a batch must be a tensor, "
            "a tuple of model arguments or a dict of keyword arguments"
        )
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    if not tensors:
        raise ConfigError(f"calibration batch {i} holds no tensor")
    for t in tensors:
        if t.numel() == 0:
            raise ConfigError(
                f"calibration batch {i} holds an empty tensor of shape {tuple(t.shape)}"
            )
        if t.is_floating_point() and t.device.type != "meta" and not torch.isfinite(t).all():
            raise ConfigError(
                f"calibration batch {i} holds NaN or inf values (tensor of shape "
                f"{tuple(t.shape)}); clean the data before calibrating"
            )
    return args, kwargs


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (tuples, lists, dicts) moved to ``device``."""
    return map_tensors(obj, lambda t: t.to(device, non_blocking=True))


def describe(batch: Batch) -> str:
    """A short description of a batch's arguments and their shapes, for error messages."""
    args, kwargs = batch
    parts = [
        f"{type(a).__name__}{tuple(a.shape) if isinstance(a, torch.Tensor) else ''}" for a in args
    ]
    parts += [
        f"{k}={tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
        for k, v in kwargs.items()
    ]
    return ", ".join(parts)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def call_error(what: str, exc: BaseException) -> ConfigError:
    """A :class:`ConfigError` for a forward that raised inside torch on calibration inputs."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ConfigError(f"{what}: {first}")


#: the errors torch and transformers raise for inputs of the wrong shape or type
FORWARD_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


def run_batch(model: nn.Module, batch: Batch, index: int, device: torch.device) -> Any:
    """``model(*args, **kwargs)`` for one batch; a shape or type mismatch raises ConfigError."""
    args, kwargs = to_device(batch, device)
    try:
        return model(*args, **kwargs)
    except ConfigError:
        raise
    except FORWARD_ERRORS as e:
        raise call_error(
            f"calibration batch {index} ({describe(batch)}) does not fit {type(model).__name__}", e
        ) from e


def check_batches(model: nn.Module, batches: list[Batch], targets: Sequence[Target] = ()) -> None:
    """Validate ``batches`` before any mask is written: a dry forward of the first batch (which
    turns a wrong shape into a :class:`ConfigError`, and must call every target's module), and
    every other batch must pass the same arguments with the same tensor ranks and dtypes."""
    called: set[int] = set()
    hooks = [t.module.register_forward_hook(lambda m, i, o: called.add(id(m))) for t in targets]
    try:
        with torch.no_grad(), calibration_mode(model):
            run_batch(model, batches[0], 0, model_device(model))
    finally:
        for h in hooks:
            h.remove()
    missed = [t.qualname for t in targets if id(t.module) not in called]
    if missed:
        raise ConfigError(
            f"{', '.join(missed[:5])}{' and more' if len(missed) > 5 else ''} never ran in the "
            "model's forward on the calibration data, so it cannot be calibrated; exclude it "
            "(exclude=...) or pass data that reaches it"
        )
    ref = _layout(batches[0])
    for i, b in enumerate(batches[1:], 1):
        if _layout(b) != ref:
            raise ConfigError(
                f"calibration batch {i} ({describe(b)}) is laid out unlike batch 0 "
                f"({describe(batches[0])}): every batch must pass the same arguments with the "
                "same tensor ranks and dtypes"
            )


def _layout(batch: Batch) -> tuple:
    def one(v: Any) -> Any:
        return (v.dim(), v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__

    args, kwargs = batch
    return tuple(one(a) for a in args), tuple(sorted((k, one(v)) for k, v in kwargs.items()))


def calibration_mode(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Eval mode (no dropout) and, for Hugging Face models, no KV cache, restored on exit."""
    return model_mode(model, training=False)


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """``model.train(training)`` and, for Hugging Face models, no KV cache; both restored on
    exit (calibration runs in eval mode, recovery in train mode)."""
    was_training = model.training
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    model.train(training)
    if use_cache:
        config.use_cache = False
    try:
        yield
    finally:
        model.train(was_training)
        if use_cache:
            config.use_cache = use_cache
