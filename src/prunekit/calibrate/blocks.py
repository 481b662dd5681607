"""The block-by-block runner.

It finds a transformer's repeated block list, captures the first block's inputs with all their
keyword arguments (never naming them), and then, block by block: collects statistics for the
block's targets in one pass, hands them to ``process`` (which prunes or solves), lets an optional
``after`` stage tune the pruned block against the dense model's block output (block
reconstruction, :mod:`prunekit.reconstruct.block`), and runs the pruned block to produce the next
block's inputs. Memory holds one block's inputs and outputs (twice with ``after``: the dense
model's stream is carried alongside).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import track
from ..targets import Target
from .batches import (
    FORWARD_ERRORS,
    Batch,
    as_batches,
    calibration_mode,
    call_error,
    check_batches,
    model_device,
    run_batch,
    to_device,
)
from .collector import Collector, all_reduce, collect
from .memory import release_freed_memory
from .statistics import LayerStats


def find_blocks(model: nn.Module, targets: list[Target]) -> tuple[str, nn.ModuleList] | None:
    """The longest ``nn.ModuleList`` of two or more same-typed blocks holding targets."""
    wanted = {id(t.module) for t in targets}
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) < 2:
            continue
        if len({type(b) for b in m}) != 1:
            continue
        if not any(id(sub) in wanted for b in m for sub in b.modules()):
            continue
        if best is None or len(m) > len(best[1]):
            best = (name, m)
    return best


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass at the first block."""


@dataclass
class BlockInputs:
    """One batch's inputs to a block: args and kwargs; ``key`` locates the hidden states."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    key: int | str

    def hidden(self) -> torch.Tensor:
        return self.args[self.key] if isinstance(self.key, int) else self.kwargs[self.key]

    def with_hidden(self, h: torch.Tensor) -> BlockInputs:
        if isinstance(self.key, int):
            args = (*self.args[: self.key], h, *self.args[self.key + 1 :])
            return BlockInputs(args, self.kwargs, self.key)
        return BlockInputs(self.args, {**self.kwargs, self.key: h}, self.key)


def hidden_key(args: tuple, kwargs: dict) -> int | str:
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return i
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return k
    raise ConfigError("the first block received no floating-point tensor to propagate")


def first_output(out: Any) -> torch.Tensor:
    """The hidden states a block returns: a tensor, or the first item of a tuple / ModelOutput."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple"):
        return out[0]
    raise ConfigError(f"a block returned {type(out).__name__}; expected a tensor or a tuple")


def capture_inputs(
    model: nn.Module, first: nn.Module, batches: list[Batch], offload: bool
) -> list[BlockInputs]:
    """Run ``model`` on each batch up to ``first``; record its args and kwargs, as passed."""
    captured: list[BlockInputs] = []
    store = torch.device("cpu") if offload else None

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if store:
            args, kwargs = to_device(args, store), to_device(kwargs, store)
        captured.append(BlockInputs(tuple(args), dict(kwargs), hidden_key(args, kwargs)))
        raise _Stop

    device = model_device(model)
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i, batch in enumerate(batches):
            try:
                run_batch(model, batch, i, device)
            except _Stop:
                continue
            raise ConfigError(f"calibration batch {i} never reached the model's first block")
    finally:
        handle.remove()
    return captured


class BlockCaller:
    """Calls one block on captured inputs, on the model's device; returns its hidden states
    (moved back to the CPU with ``offload``). Errors from inside torch become ConfigError."""

    def __init__(self, device: torch.device, offload: bool) -> None:
        self.device, self.offload = device, offload

    def __call__(self, block: nn.Module, inp: BlockInputs, hidden: torch.Tensor | None = None):
        if hidden is not None:
            inp = inp.with_hidden(hidden)
        args, kwargs = inp.args, inp.kwargs
        if self.offload:
            args, kwargs = to_device(args, self.device), to_device(kwargs, self.device)
        try:
            h = first_output(block(*args, **kwargs))
        except FORWARD_ERRORS as e:
            raise call_error(f"{type(block).__name__} failed on calibration inputs", e) from e
        return h.to("cpu") if self.offload and not torch.is_grad_enabled() else h


@dataclass
class BlockStage:
    """What an ``after`` stage receives for one block, once its layers are masked."""

    block: nn.Module
    #: the block's targets, now masked
    targets: list[Target]
    #: the (pruned model's) inputs to this block, one per batch
    inputs: list[BlockInputs]
    #: the dense model's output of this block, one per batch (the reconstruction target)
    dense: list[torch.Tensor]
    call: BlockCaller
    #: the block's final outputs on ``inputs``, one per batch, if the stage computed them (the
    #: runner then passes them on instead of running the block again)
    outputs: list[torch.Tensor] | None = None


@torch.no_grad()
def run_blockwise(
    model: nn.Module,
    targets: list[Target],
    data: Any,
    kinds: Iterable[str],
    process: Callable[[list[Target], dict[str, LayerStats]], bool],
    *,
    progress: bool = False,
    offload: bool = False,
    after: Callable[[BlockStage], None] | None = None,
) -> None:
    """Calibrate and prune block by block (see the module docstring).

    ``process(targets, stats)`` prunes or solves the given targets from their statistics and
    returns True if it changed the weights. ``after(stage)`` then runs on every block that
    ``process`` changed (and may hand back the block's outputs in ``stage.outputs``). Targets
    outside the block list are handled after the blocks, with whole-model hooks. A model with no
    recognisable block list falls back to whole-model hooks for all targets, with a warning (and
    no ``after`` stage). ``offload`` keeps the captured activations on the CPU between block
    calls. The first batch runs through the whole model before any weight changes, so data that
    does not fit raises :class:`ConfigError` first.
    """
    batches = as_batches(data)
    check_batches(model, batches, targets)
    found = find_blocks(model, targets)
    if found is None:
        warnings.warn(
            f"{type(model).__name__} has no recognisable block list (an nn.ModuleList of "
            "same-typed blocks); calibrating with whole-model hooks instead",
            stacklevel=2,
        )
        process(targets, collect(model, targets, batches, kinds, progress))
        return
    _, blocks = found
    call = BlockCaller(model_device(model), offload)
    with calibration_mode(model):
        inputs = capture_inputs(model, blocks[0], batches, offload)
        dense_in = [inp.hidden() for inp in inputs] if after is not None else None
        done: set[int] = set()
        n = len(blocks)
        for i, block in enumerate(track(blocks, f"pruning {n} blocks", progress, total=n)):
            members = {id(m) for m in block.modules()}
            block_targets = [t for t in targets if id(t.module) in members]
            done.update(id(t.module) for t in block_targets)
            dense_out = None
            if dense_in is not None:  # the dense model's stream, before this block changes
                dense_out = [call(block, inp, h) for inp, h in zip(inputs, dense_in, strict=True)]
            outputs = None
            if block_targets:
                outputs = []
                with Collector(block_targets, kinds, block) as col:
                    for inp in inputs:
                        outputs.append(call(block, inp))
                        col.end_batch()
                col.check_seen()
                all_reduce(col.stats)
                release_freed_memory()  # the forward's temporaries, before the solves
                if process(block_targets, col.stats):
                    outputs = None
                    if after is not None:
                        stage = BlockStage(block, block_targets, inputs, dense_out, call)
                        after(stage)
                        outputs = stage.outputs
            dense_in = dense_out
            if i == n - 1:
                break
            if outputs is None:
                outputs = [call(block, inp) for inp in inputs]
            inputs = [inp.with_hidden(h) for inp, h in zip(inputs, outputs, strict=True)]
            del outputs, dense_out
            release_freed_memory()  # this block's temporaries, before the next block's masks
    rest = [t for t in targets if id(t.module) not in done]
    if rest:
        process(rest, collect(model, rest, batches, kinds))
