"""Recovery: fine-tune a pruned model with its masks held, or prune and recover in one call.

:func:`prune_and_recover` runs the recipe of the notes: prune in ``k`` steps to the target
(``Iterative``, or the config's own ``Iterative``/``Cubic`` schedule), recovering by
distillation from the dense model (or plain fine-tuning) between steps and after the last one;
then bake the masks in, or shrink channels and heads physically.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..calibrate import model_device, run_batch
from ..config import PruneConfig
from ..errors import ConfigError
from ..masks import bake
from ..pruner import Pruner
from ..schedule import Iterative, OneShot, Schedule
from .distill import Distiller
from .distributed import broadcast_masks, data_parallel
from .loop import EvalFn, History, check_positive, normalise, run_training

METHODS = ("distill", "finetune")
#: how many training batches calibrate a data-aware criterion when no ``calibration`` is given
CALIBRATION_BATCHES = 16


class TaskLoss:
    """The task loss of one raw batch: ``loss_fn(output, batch)``, else the model's ``.loss``."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        inputs: Callable[[Any], Any] | None = None,
    ) -> None:
        self.model, self.loss_fn, self.inputs = model, loss_fn, inputs

    def __call__(self, batch: Any) -> torch.Tensor:
        out = run_batch(self.model, normalise(batch, self.inputs), 0, model_device(self.model))
        loss = self.loss_fn(out, batch) if self.loss_fn is not None else getattr(out, "loss", None)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ConfigError(
                "fine-tuning needs a loss: pass loss_fn=<fn(output, batch) -> scalar>, or batches "
                "from which the model computes its own loss (e.g. Hugging Face labels=...)"
            )
        return loss.reshape(())


def finetune(
    model: nn.Module,
    data: Iterable[Any],
    *,
    steps: int,
    lr: float = 1e-4,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    inputs: Callable[[Any], Any] | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int | None = None,
    after_step: Callable[[int], object] | None = None,
    seed: int = 0,
    progress: bool = False,
    **options: Any,
) -> History:
    """Fine-tune ``model`` on its task loss for ``steps`` AdamW steps; its masks hold throughout.

    ``options`` go to :func:`~prunekit.train.loop.run_training` (``weight_decay``, ``warmup``,
    ``max_grad_norm``).
    """
    return run_training(
        model,
        data,
        steps,
        TaskLoss(data_parallel(model), loss_fn, inputs),
        lr=lr,
        eval_fn=eval_fn,
        eval_every=eval_every,
        after_step=after_step,
        seed=seed,
        progress=progress,
        label="fine-tuning",
        **options,
    )


@dataclass
class Recovered:
    """The result of :func:`prune_and_recover`."""

    #: the pruned, recovered model: masks baked in, or physically shrunk (structured)
    model: nn.Module
    pruner: Pruner
    history: History
    #: the sparsities applied, in order, with the training step before which each was applied
    prunes: list[tuple[int, float]]


def last_prune_step(schedule: Schedule, final: float, limit: int = 10_000_000) -> int:
    """The step at which ``schedule`` reaches ``final`` sparsity."""
    for step in range(limit):
        s = schedule.sparsity_at(step, final)
        if s is not None and abs(s - final) < 1e-9:
            return step
    raise ConfigError(f"schedule {schedule!r} never reaches the target sparsity {final:g}")


def prune_and_recover(
    model: nn.Module,
    config: PruneConfig,
    data: Iterable[Any],
    *,
    recover_steps: int,
    prune_steps: int = 4,
    method: str = "distill",
    teacher: nn.Module | None = None,
    example_inputs: Any = None,
    calibration: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    inputs: Callable[[Any], Any] | None = None,
    lr: float = 1e-4,
    temperature: float = 2.0,
    alpha: float = 0.5,
    hidden_layers: Sequence[str] | Mapping[str, str] | None = None,
    hidden_weight: float = 1.0,
    target: str = "auto",
    cache_teacher: bool = False,
    finalize: bool = True,
    eval_fn: EvalFn | None = None,
    eval_every: int | None = None,
    seed: int = 0,
    progress: bool = False,
    **options: Any,
) -> Recovered:
    """Prune ``model`` to ``config``'s target gradually, recovering between the pruning steps.

    With the default one-shot schedule, the target is reached in ``prune_steps`` equal steps
    (``Iterative(prune_steps, every=recover_steps)``); an ``Iterative`` or ``Cubic`` schedule in
    ``config`` is used as given. Training continues ``recover_steps`` steps after the last prune.
    N:M passes through wider patterns on the way (3:4, then 2:4). ``method="distill"`` trains
    against ``teacher`` (default: a copy of the dense model, taken before pruning); ``"finetune"``
    on the task loss (``loss_fn`` or the model's own). ``temperature``, ``alpha``,
    ``hidden_layers``, ``hidden_weight`` and ``target`` are
    :class:`~prunekit.train.distill.Distiller`'s; ``cache_teacher`` is
    :func:`~prunekit.train.distill.distill`'s (the dense teacher does not change). Data-aware
    criteria calibrate on ``calibration`` (default: the first training batches). Structured
    granularities need ``example_inputs`` and are shrunk physically at the end; the others are
    baked. ``finalize=False`` leaves the masks attached. Under ``torch.distributed`` the model
    trains under DDP (gradients averaged across ranks) and rank 0's masks are broadcast after
    every pruning step.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown recovery method {method!r}; valid choices: {METHODS}")
    check_positive("recover_steps", recover_steps)
    check_positive("prune_steps", prune_steps)
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"config must be a PruneConfig, got {type(config).__name__}")
    resolved = config.resolve()
    if isinstance(resolved.schedule, OneShot):
        config = dataclasses.replace(
            config, schedule=Iterative(steps=prune_steps, every=recover_steps)
        )
        resolved = config.resolve()
    last = last_prune_step(resolved.schedule, resolved.sparsity)
    if resolved.criterion.requires_data and calibration is None:
        head = itertools.islice(data, CALIBRATION_BATCHES)
        calibration = [inputs(b) if inputs is not None else b for b in head]
    if method == "distill" and teacher is None:
        teacher = copy.deepcopy(model).eval()
    pruner = Pruner(
        model,
        config,
        data=calibration,
        example_inputs=example_inputs,
        loss_fn=loss_fn,
        progress=progress,
    )
    prunes: list[tuple[int, float]] = []

    def prune(step: int) -> None:
        applied = pruner.step()
        if applied is not None and applied > 0:
            broadcast_masks(model)
            prunes.append((step, applied))

    distiller = None
    if method == "distill":  # built (and its options checked) before the first mask
        distiller = Distiller(
            model,
            teacher,
            temperature=temperature,
            alpha=alpha,
            hidden_layers=hidden_layers,
            hidden_weight=hidden_weight,
            target=target,
            loss_fn=loss_fn,
            inputs=inputs,
        )
    prune(0)  # schedule step 0, before any training
    forward = data_parallel(model)  # DDP under torch.distributed: gradients averaged
    if distiller is not None:
        items, loss_of = distiller.objective(data, forward, cache_teacher)
    else:
        items, loss_of = data, TaskLoss(forward, loss_fn, inputs)
    history = run_training(
        model,
        items,
        last + recover_steps,
        loss_of,
        lr=lr,
        eval_fn=eval_fn,
        eval_every=eval_every,
        after_step=lambda step: prune(step + 1),
        seed=seed,
        progress=progress,
        label=f"prune and recover ({method})",
        **options,
    )
    if finalize:
        if resolved.granularity.structured:
            from ..structure.shrink import shrink

            model = shrink(model, example_inputs)
        else:
            bake(model)
    return Recovered(model, pruner, history, prunes)
