"""The Pruner: holds a config's state (masks, schedule step) on one model, and applies it."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from .config import PruneConfig, make_config
from .criteria import ScoreContext
from .errors import ConfigError, PrunekitError, TargetError
from .execute import strategy_for
from .masks import MaskState, get_mask, record_granularity, shrink_mask
from .structure.experts import expert_modules, is_expert_weight
from .targets import (
    Target,
    default_excluded,
    matching,
    output_head,
    select_targets,
    selected,
)


def check_embeddings(model: nn.Module, targets: list[Target], structured: bool) -> None:
    """Refuse included embedding tables under a structured granularity (the width they feed
    prunes their columns already); warn when one is tied to the output head."""
    tables = [t for t in targets if t.embedding]
    if tables and structured:
        raise ConfigError(
            f"embedding {tables[0].qualname} is included, but structured granularities prune "
            "embedding columns through the width they feed; include embeddings only with an "
            "element-wise granularity (unstructured, N:M, block)"
        )
    head = output_head(model)
    tied = getattr(head, "weight", None)
    for t in tables:
        if tied is not None and t.weight is tied:
            warnings.warn(
                f"{t.qualname} is tied to the output head ({type(head).__name__}): pruning the "
                "embedding prunes the head's rows too",
                stacklevel=3,
            )


class Pruner:
    """Attaches masks to ``model`` according to ``config``.

    ``Pruner(model, config)`` or ``Pruner(model, sparsity=0.9, schedule=...)`` (keyword fields of
    :class:`PruneConfig`). Everything is validated in the constructor, before the model is
    touched. Call :meth:`step` once per training step; the schedule decides when masks shrink.
    ``data`` (calibration batches) may be any iterable; a one-shot iterator is read once and
    kept, since some strategies pass over the data twice.
    """

    def __init__(
        self,
        model: nn.Module,
        config: PruneConfig | float | None = None,
        *,
        data: Iterable[Any] | None = None,
        example_inputs: Any = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        progress: bool = False,
        **fields: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TargetError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = make_config(config, fields)
        self.resolved = self.config.resolve()
        self.targets: list[Target] = select_targets(model, self.config.include, self.config.exclude)
        meta = [t.qualname for t in self.targets if t.weight.is_meta]
        if meta:
            raise TargetError(
                f"{meta[0]} is on the meta device (no values to score); load the weights, "
                "e.g. with model.to_empty(device='cpu') and load_state_dict, before pruning"
            )
        for t in self.targets:
            self.resolved.granularity.check(t)
        check_embeddings(model, self.targets, self.resolved.granularity.structured)
        if self.resolved.criterion.requires_data and data is None:
            raise ConfigError(
                f"criterion {self.config.criterion!r} is data-aware: "
                "pass data=<calibration batches>"
            )
        if self.resolved.granularity.structured and example_inputs is None:
            raise ConfigError(
                f"granularity {self.resolved.granularity.spec!r} traces the model: pass "
                "example_inputs=<a tensor, tuple or dict of inputs the model accepts>"
            )
        if data is not None and isinstance(data, Iterator):
            data = list(data)
        self.data = data
        self.example_inputs = example_inputs
        self.loss_fn = loss_fn
        self.progress = progress
        self._groups: list[Any] | None = None
        self._step = 0

    def groups(self) -> list[Any]:
        """The structured groups whose prunable layers are all targets (built once, lazily)."""
        if self._groups is None:
            # default-excluded output embeddings (lm_head) may lose input columns: their
            # vocabulary rows are the model's output and never part of a group
            head = default_excluded(self.model) - matching(self.model, self.config.exclude)
            chosen = {id(t.module) for t in self.targets} | head
            chosen |= expert_modules(self.model, self.config.include, self.config.exclude)
            recurrent = {id(m) for m in self.model.modules() if isinstance(m, nn.RNNBase)}
            chosen |= selected(self.model, recurrent, self.config.include, self.config.exclude)
            try:
                found = self.resolved.granularity.groups(self.model, self.example_inputs)
            except PrunekitError:
                raise
            except (RuntimeError, TypeError, ValueError, IndexError) as e:  # torch's own errors
                raise ConfigError(
                    f"example_inputs do not fit {type(self.model).__name__}: its forward pass "
                    f"failed with {type(e).__name__}: {e}"
                ) from e
            self._groups = [
                g
                for g in found
                if all(
                    (s.target() is None and s.recurrent() is None) or id(s.module) in chosen
                    for s in g.slots
                )
            ]
        return self._groups

    @property
    def sparsity(self) -> float:
        """The achieved sparsity over all targets (and, under a structured granularity, the 3-D
        weights of the MoE experts modules it may cut)."""
        weights = [t.weight for t in self.targets]
        if self.resolved.granularity.structured:
            chosen = expert_modules(self.model, self.config.include, self.config.exclude)
            weights += [
                p
                for m in self.model.modules()
                if id(m) in chosen
                for a, p in m.named_parameters(recurse=False)
                if is_expert_weight(m, a)
            ]
        kept = sum(int(torch.count_nonzero(w)) for w in weights)
        return 1.0 - kept / sum(w.numel() for w in weights)

    def step(self) -> float | None:
        """Advance the schedule by one step; prune if due. Returns the sparsity applied, if any."""
        target = self.resolved.schedule.sparsity_at(self._step, self.resolved.sparsity)
        self._step += 1
        if target is not None and target > 0:
            self.apply(target)
        return target

    @torch.no_grad()
    def apply(self, sparsity: float) -> None:
        """Shrink every target's mask to ``sparsity`` now. Masks only shrink."""
        ctx = ScoreContext(
            self.model,
            seed=self.config.seed,
            data=self.data,
            loss_fn=self.loss_fn,
            progress=self.progress,
        )
        strategy_for(self)(self, ctx, sparsity)

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        """The criterion's ``[out, in]`` scores for ``target``, ``-inf`` where already pruned."""
        return self.without_pruned(target, self.resolved.criterion.scores(target, ctx).float())

    def without_pruned(self, target: Target, scores: torch.Tensor) -> torch.Tensor:
        """``[out, in]`` scores, ``-inf`` where ``target`` is already pruned (masks only shrink)."""
        old = get_mask(target.module, target.param)
        return scores if old is None else scores.masked_fill(~target.to_matrix(old), -torch.inf)

    def attach(self, target: Target, keep: torch.Tensor) -> None:
        """AND the ``[out, in]`` keep-mask into ``target``'s mask and enforce it."""
        shrink_mask(target.module, target.param, target.from_matrix(keep))
        record_granularity(target.module, target.param, self.resolved.granularity.spec)

    def state_dict(self) -> dict[str, Any]:
        """Step count, masks and config (a recipe dict), so that training can resume."""
        return {
            "step": self._step,
            "masks": MaskState(self.model).state_dict(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: step and masks (ANDed with any present)."""
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"pruner state has an invalid step {step!r}")
        MaskState(self.model).load_state_dict(state.get("masks", {}))
        for t in self.targets:
            if get_mask(t.module, t.param) is not None:
                record_granularity(t.module, t.param, self.resolved.granularity.spec)
        self._step = step
