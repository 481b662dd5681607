"""The masked training loop shared by distillation, fine-tuning and prune-and-recover.

Masks need no help here: prunekit's masks hold through any optimizer (see :mod:`prunekit.masks`),
so this loop is plain AdamW with warm-up and cosine decay, gradient clipping, a seed, a progress
bar, a periodic evaluation callback and an ``after_step`` hook (where a Pruner steps).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..calibrate.batches import as_batches, model_device, model_mode
from ..errors import ConfigError, WeightError
from ..progress import track
from .distributed import average_gradients

Batch = tuple[tuple, dict]
#: ``eval_fn(model, step) -> a number or a dict of numbers``
EvalFn = Callable[[nn.Module, int], Any]


@dataclass
class History:
    """What a training run did: the loss of every step, the evaluations, the CPU time spent."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    #: ``(step, eval_fn's result)``, every ``eval_every`` steps and after the last one
    evals: list[tuple[int, Any]] = field(default_factory=list)
    #: process CPU seconds (all threads) of the training, evaluations excluded
    cpu_seconds: float = 0.0
    #: wall seconds of the whole run
    wall_seconds: float = 0.0
    #: process CPU seconds spent in ``eval_fn``
    eval_cpu_seconds: float = 0.0


def check_positive(name: str, value: object, allow_zero: bool = False) -> None:
    """Raise ConfigError unless ``value`` is an int > 0 (or >= 0 with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def check_number(name: str, value: object, low: float, high: float = math.inf) -> float:
    """``value`` as a float in ``[low, high]``, or ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def normalise(item: Any, inputs: Callable[[Any], Any] | None) -> Batch:
    """One raw batch as ``(args, kwargs)`` model inputs, after ``inputs(item)`` if given."""
    return as_batches([inputs(item) if inputs is not None else item])[0]


def cycle(data: Iterable[Any]) -> Iterator[Any]:
    """Yield the batches of ``data`` again and again (a list, dataset or DataLoader)."""
    if data is None:
        raise ConfigError("data is None: pass an iterable of training batches")
    seen = 0
    while True:
        count = 0
        for item in data:
            count += 1
            yield item
        if count == 0:
            raise ConfigError(
                "data is empty"
                if seen == 0
                else f"data ran out after {seen} batches: pass a "
                "re-iterable (a list, a Dataset or a DataLoader), not a one-shot iterator"
            )
        seen += count


def lr_factor(step: int, steps: int, warmup: int, spent: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``steps``, or earlier
    when ``spent`` (the fraction of a CPU budget used, 0..1) is further along."""
    if step < warmup:
        return (step + 1) / warmup
    progress = max((step - warmup) / max(1, steps - warmup), spent)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def training_mode(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Train mode and, for Hugging Face models, no KV cache; both restored on exit."""
    return model_mode(model, training=True)


@contextlib.contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """Every dropout module of ``model`` at rate 0 (Hugging Face attention reads its dropout
    module's ``p`` too); the rates are restored on exit."""
    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    rates = [(m, m.p) for m in model.modules() if isinstance(m, kinds)]
    for m, _ in rates:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in rates:
            m.p = p


def mixed_precision(
    model: nn.Module, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``model``'s device type, or nothing when None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(model_device(model).type, dtype=dtype)


def run_training(
    model: nn.Module,
    data: Iterable[Any],
    steps: int,
    loss_of: Callable[[Any], torch.Tensor],
    *,
    lr: float,
    weight_decay: float = 0.0,
    warmup: int | None = None,
    max_grad_norm: float | None = 1.0,
    extra_params: Iterable[nn.Parameter] = (),
    seed: int = 0,
    progress: bool = False,
    eval_fn: EvalFn | None = None,
    eval_every: int | None = None,
    after_step: Callable[[int], object] | None = None,
    cpu_budget: float | None = None,
    dropout: bool = True,
    autocast: torch.dtype | None = None,
    label: str = "training",
) -> History:
    """Train ``model`` for ``steps`` optimizer steps on ``loss_of(raw batch)``; return the history.

    Under ``torch.distributed``, ``loss_of`` runs its forward through
    :func:`~prunekit.train.distributed.data_parallel`'s wrapper of ``model`` (DDP averages the
    gradients); those of ``extra_params`` are averaged here.

    ``data`` is cycled. The RNG (dropout) is seeded with ``seed`` inside a forked RNG state, so the
    caller's global RNG is left as it was. ``eval_fn(model, step)`` runs every ``eval_every`` steps
    and at the end; then ``after_step(step)`` (a Pruner's ``step``), after every optimizer step.
    ``cpu_budget`` (process CPU seconds of training, evaluations excluded) ends training early once
    spent; the cosine decay then follows whichever of the step count and the budget is further
    along, so a budget-bound run still anneals its learning rate to zero. ``dropout=False``
    trains with every dropout rate at 0 (a student matching a deterministic teacher).
    ``autocast=torch.bfloat16`` runs ``loss_of`` under ``torch.autocast`` (mixed precision: the
    weights, their gradients and the optimizer stay float32).
    """
    check_positive("steps", steps)
    lr = check_number("lr", lr, 0.0)
    if lr == 0.0:
        raise ConfigError("lr must be > 0")
    check_number("weight_decay", weight_decay, 0.0)
    warmup = min(100, steps // 10) if warmup is None else warmup
    check_positive("warmup", warmup, allow_zero=True)
    if eval_every is not None:
        check_positive("eval_every", eval_every)
    if max_grad_norm is not None:
        check_number("max_grad_norm", max_grad_norm, 0.0)
    if cpu_budget is not None:
        check_number("cpu_budget", cpu_budget, 0.0)
    if autocast not in (None, torch.bfloat16):
        raise ConfigError(
            f"autocast must be None or torch.bfloat16 (float16 would need a gradient scaler), "
            f"got {autocast!r}"
        )
    extra = list(extra_params)
    params = [p for p in model.parameters() if p.requires_grad] + extra
    if not params:
        raise ConfigError(f"{type(model).__name__} has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history = History()
    batches = cycle(data)
    cpu0, wall0 = time.process_time(), time.perf_counter()

    def trained() -> float:  # CPU seconds of training so far
        return time.process_time() - cpu0 - history.eval_cpu_seconds

    no_dropout = contextlib.nullcontext() if dropout else dropout_off(model)
    with torch.random.fork_rng(devices=[]), training_mode(model), no_dropout:
        torch.manual_seed(seed)
        for step in track(range(steps), label, progress):
            used = min(1.0, trained() / cpu_budget) if cpu_budget else 0.0
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(step, steps, warmup, used)
            with mixed_precision(model, autocast):
                loss = loss_of(next(batches))
            if not torch.isfinite(loss):
                raise WeightError(
                    f"the loss became {float(loss)} at step {step}; lower lr (now {lr:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(extra)  # the model's own are averaged by DDP (data_parallel)
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            history.losses.append(float(loss.detach()))
            history.steps = step + 1
            spent = cpu_budget is not None and trained() >= cpu_budget
            last = step + 1 == steps or spent
            if eval_fn is not None and (last or (eval_every and (step + 1) % eval_every == 0)):
                eval0 = time.process_time()
                model.eval()
                history.evals.append((step + 1, eval_fn(model, step + 1)))
                model.train()
                history.eval_cpu_seconds += time.process_time() - eval0
            if after_step is not None:
                after_step(step)
            if spent:
                break
    history.cpu_seconds = trained()
    history.wall_seconds = time.perf_counter() - wall0
    return history
