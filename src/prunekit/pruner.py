"""The Pruner: applies a PruneConfig to a model, once or on a schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .config import PruneConfig
from .criteria import ScoreContext
from .errors import ConfigError, TargetError, WeightError
from .granularity.unstructured import Unstructured
from .masks import MaskState, get_mask, record_granularity, shrink_mask
from .progress import track
from .structure.select import prune_groups
from .targets import Target, default_excluded, matching, select_targets


class Pruner:
    """Attaches masks to ``model`` according to ``config``.

    Everything is validated in the constructor, before the model is touched. Call :meth:`step`
    once per training step; the schedule decides when masks shrink.
    """

    def __init__(
        self,
        model: nn.Module,
        config: PruneConfig | None = None,
        *,
        data: Iterable[Any] | None = None,
        example_inputs: Any = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TargetError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = config if config is not None else PruneConfig()
        if not isinstance(self.config, PruneConfig):
            raise ConfigError(f"config must be a PruneConfig, got {type(self.config).__name__}")
        self.resolved = self.config.resolve()
        self.targets: list[Target] = select_targets(model, self.config.include, self.config.exclude)
        for t in self.targets:
            self.resolved.granularity.check(t)
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
        self.data = data
        self.example_inputs = example_inputs
        self.loss_fn = loss_fn
        self._groups: list[Any] | None = None
        self.progress = progress
        self._step = 0

    def groups(self) -> list[Any]:
        """The structured groups whose prunable layers are all targets (built once, lazily)."""
        if self._groups is None:
            # default-excluded output embeddings (lm_head) may lose input columns: their
            # vocabulary rows are the model's output and never part of a group
            head = default_excluded(self.model) - matching(self.model, self.config.exclude)
            chosen = {id(t.module) for t in self.targets} | head
            self._groups = [
                g
                for g in self.resolved.granularity.groups(self.model, self.example_inputs)
                if all(s.target() is None or id(s.module) in chosen for s in g.slots)
            ]
        return self._groups

    @property
    def sparsity(self) -> float:
        """The achieved sparsity over all targets."""
        kept = total = 0
        for t in self.targets:
            kept += int(torch.count_nonzero(t.weight))
            total += t.weight.numel()
        return 1.0 - kept / total

    def step(self) -> float | None:
        """Advance the schedule by one step; prune if due. Returns the sparsity applied, if any."""
        target = self.config.schedule.sparsity_at(self._step, self.resolved.sparsity)
        self._step += 1
        if target is not None and target > 0:
            self.apply(target)
        return target

    @torch.no_grad()
    def apply(self, sparsity: float) -> None:
        """Shrink every target's mask to ``sparsity`` now. Masks only shrink."""
        res = self.resolved
        ctx = ScoreContext(
            self.model,
            seed=self.config.seed,
            data=self.data,
            loss_fn=self.loss_fn,
            progress=self.progress,
        )
        gran = res.granularity
        if gran.structured:  # groups check their own scores for NaN/inf
            prune_groups(
                self.groups(),
                sparsity,
                res.criterion,
                ctx,
                self.config.scope,
                gran.round_to,
                gran.max_ratio,
            )
            for t in self.targets:
                if get_mask(t.module, t.param) is not None:
                    record_granularity(t.module, t.param, gran.spec)
            return
        for t in self.targets:
            if not torch.isfinite(t.weight.detach().sum()):  # NaN/inf propagate; no big temporary
                raise WeightError(f"{t.qualname} holds NaN or inf weights; fix them before pruning")
        if res.criterion.per_row and isinstance(gran, Unstructured) and res.allocation.layerwise:
            gran = Unstructured(per_row=True)
        # calibrate and prune block by block; reconstruction and refinement need the runner too
        cfg = self.config
        if (
            res.criterion.layerwise
            or getattr(cfg, "reconstruct", None)
            or getattr(cfg, "refine", 0)
        ):
            from .oneshot import prune_layerwise

            prune_layerwise(self, ctx, sparsity, gran)
            return
        res.criterion.collect(self.targets, ctx)
        scores = {}
        for t in track(self.targets, "scoring layers", self.progress):
            scores[t.qualname] = self.scores(t, ctx)
        keep = res.allocation.masks(scores, sparsity, gran)
        for t in self.targets:
            self.attach(t, keep[t.qualname])

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        """The criterion's ``[out, in]`` scores for ``target``, ``-inf`` where already pruned."""
        s = self.resolved.criterion.scores(target, ctx).float()
        old = get_mask(target.module, target.param)
        return s if old is None else s.masked_fill(~target.to_matrix(old), -torch.inf)

    def attach(self, target: Target, keep: torch.Tensor) -> None:
        """AND the ``[out, in]`` keep-mask into ``target``'s mask and enforce it."""
        shrink_mask(target.module, target.param, target.from_matrix(keep))
        record_granularity(target.module, target.param, self.resolved.granularity.spec)

    def state_dict(self) -> dict[str, Any]:
        """Step count, masks and config, so that training can resume."""
        return {
            "step": self._step,
            "masks": MaskState(self.model).state_dict(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"pruner state has an invalid step {step!r}")
        MaskState(self.model).load_state_dict(state.get("masks", {}))
        for t in self.targets:
            if get_mask(t.module, t.param) is not None:
                record_granularity(t.module, t.param, self.resolved.granularity.spec)
        self._step = step
