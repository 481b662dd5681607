"""Sensitivity analysis: how much a metric suffers when one layer (or block) alone is pruned.

:func:`sensitivity` prunes each unit alone at each sparsity of a grid (the weights are restored
after every evaluation: the model ends bit-identical), calls ``eval_fn(model)`` and returns the
curves. Results are cached in a JSON file keyed by a fingerprint of the weights, the criterion,
the granularity and the unit, so that an interrupted or extended sweep only evaluates what is
missing. :func:`allocate` turns the curves into per-layer sparsities that meet a global budget at
the least predicted loss (``scope="sensitivity"``); :func:`search_allocation` improves per-layer
sparsities by evaluating candidates within a time budget (EvoPress-style level swaps).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..calibrate import LayerStats, as_batches, calibration_mode, collect, model_device, run_batch
from ..config import PruneConfig
from ..criteria import ScoreContext, Solver
from ..errors import ConfigError
from ..progress import track
from ..targets import Target, select_targets


@dataclass
class Sensitivity:
    """Per-unit curves: ``metric[unit][i]`` is ``eval_fn`` with only ``unit`` pruned to
    ``sparsities[i]``; ``baseline`` is the dense model's metric. ``sizes`` are each unit's weight
    counts and ``layers`` the layers of each unit."""

    sparsities: list[float]
    baseline: float
    metric: dict[str, list[float]]
    sizes: dict[str, int]
    layers: dict[str, list[str]] = field(default_factory=dict)
    criterion: str = "magnitude"
    granularity: str = "unstructured"
    higher_is_better: bool = False

    def loss(self, unit: str) -> list[float]:
        """The metric's degradation at each sparsity (positive is worse)."""
        sign = -1.0 if self.higher_is_better else 1.0
        return [sign * (m - self.baseline) for m in self.metric[unit]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparsities": self.sparsities,
            "baseline": self.baseline,
            "metric": self.metric,
            "sizes": self.sizes,
            "layers": self.layers,
            "criterion": self.criterion,
            "granularity": self.granularity,
            "higher_is_better": self.higher_is_better,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        return cls(**d)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the curves as JSON, atomically (``scope={"type": "sensitivity", "curves":
        path}`` reads them)."""
        atomic_json(Path(path), self.to_dict())
        return Path(path)


def fingerprint(targets: list[Target]) -> str:
    """A hash of the targets' names and weights (the cache key of a model)."""
    h = hashlib.sha256()
    for t in targets:
        h.update(t.qualname.encode())
        h.update(t.weight.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _units(model: nn.Module, targets: list[Target], granularity: str) -> dict[str, list[Target]]:
    if granularity == "layer":
        return {t.qualname: [t] for t in targets}
    if granularity != "block":
        raise ConfigError(f"sensitivity units must be 'layer' or 'block', got {granularity!r}")
    from ..calibrate import find_blocks

    found = find_blocks(model, targets)
    if found is None:
        raise ConfigError("units='block' needs a model with a block list (nn.ModuleList)")
    name, blocks = found
    out: dict[str, list[Target]] = {}
    for i, b in enumerate(blocks):
        ids = {id(m) for m in b.modules()}
        members = [t for t in targets if id(t.module) in ids]
        if members:
            out[f"{name}.{i}"] = members
    return out


class _Masker:
    """Pruned versions of single targets, by the configured criterion and granularity, from
    dense-model statistics gathered once."""

    def __init__(self, model, targets, criterion, granularity, data, seed):
        cfg = PruneConfig(sparsity=0.5, granularity=granularity, criterion=criterion, seed=seed)
        res = cfg.resolve()
        if res.granularity.structured:
            raise ConfigError("sensitivity supports element granularities (unstructured, N:M)")
        self.criterion = res.criterion
        self.granularity = res.criterion.comparison(res.granularity)  # e.g. Wanda: per row
        self.ctx = ScoreContext(model, seed=seed, data=data)
        if self.criterion.requires_data:
            if data is None:
                raise ConfigError(f"criterion {criterion!r} is data-aware: pass data=")
            self.ctx.data = as_batches(data)
            stats: dict[str, LayerStats] = collect(
                model, targets, self.ctx.data, self.criterion.stats
            )
            self.ctx.stats = stats

    def pruned(self, target: Target, sparsity: float) -> torch.Tensor:
        """``target``'s weight pruned alone to ``sparsity`` (its dense weight is unchanged)."""
        if self.granularity.fixed_sparsity is not None:
            sparsity = self.granularity.fixed_sparsity
        if isinstance(self.criterion, Solver):
            dense = target.weight.detach().clone()
            self.criterion.solve([target], self.ctx, {target.qualname: sparsity}, self.granularity)
            out = target.weight.detach().clone()
            target.weight.data.copy_(dense)
            return out
        keep = self.granularity.select(self.criterion.scores(target, self.ctx).float(), sparsity)
        return target.weight.detach() * target.from_matrix(keep).to(target.weight.dtype)


def atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


@torch.no_grad()
def sensitivity(
    model: nn.Module,
    eval_fn: Callable[[nn.Module], float],
    sparsities: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
    granularity: str = "unstructured",
    criterion: str = "magnitude",
    *,
    units: str = "layer",
    include: Any = None,
    exclude: Any = None,
    data: Any = None,
    cache: str | os.PathLike | None = None,
    higher_is_better: bool = False,
    progress: bool = False,
    seed: int = 0,
) -> Sensitivity:
    """Curves of ``eval_fn(model)`` against sparsity, one per layer (``units="layer"``) or
    block (``units="block"``), each pruned alone with ``criterion`` at ``granularity``.

    ``eval_fn`` returns a float (a loss, unless ``higher_is_better``). ``cache`` names a JSON file
    of earlier results for the same weights and settings; new results are added to it. The model
    is left bit-identical.
    """
    grid = [float(s) for s in sparsities]
    if not grid or any(not 0 < s < 1 for s in grid):
        raise ConfigError(f"sparsities must be in (0, 1), got {list(sparsities)}")
    targets = select_targets(model, include, exclude)
    groups = _units(model, targets, units)
    masker = _Masker(model, targets, criterion, granularity, data, seed)
    key = f"{fingerprint(targets)}|{criterion}|{granularity}|{units}"
    path = Path(cache) if cache is not None else None
    store: dict[str, Any] = {}
    if path is not None and path.exists():
        store = json.loads(path.read_text()).get(key, {})
    if "baseline" not in store:
        store["baseline"] = float(eval_fn(model))
    jobs = [(u, s) for u in groups for s in grid if f"{u}@{s:g}" not in store]
    for unit, s in track(jobs, "sensitivity", progress):
        members = groups[unit]
        dense = [t.weight.detach().clone() for t in members]
        try:
            for t in members:
                t.weight.data.copy_(masker.pruned(t, s))
            store[f"{unit}@{s:g}"] = float(eval_fn(model))
        finally:
            for t, w in zip(members, dense, strict=True):
                t.weight.data.copy_(w)
        if path is not None:
            old = json.loads(path.read_text()) if path.exists() else {}
            atomic_json(path, {**old, key: store})
    sens = Sensitivity(
        sparsities=grid,
        baseline=store["baseline"],
        metric={u: [store[f"{u}@{s:g}"] for s in grid] for u in groups},
        sizes={u: sum(t.weight.numel() for t in ms) for u, ms in groups.items()},
        layers={u: [t.qualname for t in ms] for u, ms in groups.items()},
        criterion=criterion,
        granularity=granularity,
        higher_is_better=higher_is_better,
    )
    if path is not None:  # the complete sweep, for scope="sensitivity"
        old = json.loads(path.read_text()) if path.exists() else {}
        atomic_json(path, {**old, key: {**store, "curves": sens.to_dict()}})
    return sens


def allocate(sens: Sensitivity, sparsity: float, step: float = 0.01) -> dict[str, float]:
    """Per-unit sparsities whose size-weighted mean is ``sparsity``, at the least predicted loss.

    Each unit's predicted loss is its curve, linearly interpolated (zero at sparsity 0) and made
    non-decreasing; the budget is filled greedily in ``step`` increments, always where the next
    increment costs the least loss per pruned weight; the last increment is partial, so the
    budget is met exactly. Units stay within the measured grid (never beyond its top).
    """
    top = max(sens.sparsities)
    if not 0 <= sparsity <= top:
        raise ConfigError(f"sparsity {sparsity} is outside the measured grid (0, {top}]")
    xs = [0.0, *sens.sparsities]
    curves = {}
    for u in sens.metric:
        ys, best = [], 0.0
        for y in [0.0, *sens.loss(u)]:
            best = max(best, y)
            ys.append(best)
        curves[u] = ys

    def predicted(u: str, s: float) -> float:
        for i in range(1, len(xs)):
            if s <= xs[i] + 1e-12:
                f = (s - xs[i - 1]) / (xs[i] - xs[i - 1])
                return curves[u][i - 1] + f * (curves[u][i] - curves[u][i - 1])
        return curves[u][-1]

    total = sum(sens.sizes.values())
    need = sparsity * total  # weights to prune
    level = dict.fromkeys(sens.metric, 0.0)
    pruned = 0.0
    while need - pruned > 1e-9 * total:
        best_u, best_cost = None, math.inf
        for u, s in level.items():
            if s >= top - 1e-12:
                continue
            nxt = min(s + step, top)
            cost = (predicted(u, nxt) - predicted(u, s)) / ((nxt - s) * sens.sizes[u])
            if cost < best_cost:
                best_u, best_cost = u, cost
        if best_u is None:
            break
        s = level[best_u]
        room = (min(s + step, top) - s) * sens.sizes[best_u]
        take = min(room, need - pruned)
        level[best_u] = s + take / sens.sizes[best_u]
        pruned += take
    return level


def layer_sparsities(sens: Sensitivity, sparsity: float) -> dict[str, float]:
    """:func:`allocate` expanded from units to their layers (a block's layers share its level)."""
    return {layer: s for u, s in allocate(sens, sparsity).items() for layer in sens.layers[u]}


def output_error(model: nn.Module, data: Any) -> Callable[[nn.Module], float]:
    """An ``eval_fn``: the relative squared error of the model's first output against the dense
    model's, on ``data`` (the dense outputs are computed now)."""
    batches = as_batches(data)
    device = model_device(model)

    def first(out: Any) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        if hasattr(out, "logits"):
            return out.logits
        if hasattr(out, "last_hidden_state"):
            return out.last_hidden_state
        return out[0]

    with torch.no_grad(), calibration_mode(model):
        ref = [first(run_batch(model, b, i, device)).float() for i, b in enumerate(batches)]
    den = sum(float(r.square().sum()) for r in ref)

    def evaluate(m: nn.Module) -> float:
        num = 0.0
        with torch.no_grad(), calibration_mode(m):
            for i, b in enumerate(batches):
                num += float((first(run_batch(m, b, i, device)).float() - ref[i]).square().sum())
        return num / max(den, 1e-30)

    return evaluate


def search_allocation(
    model: nn.Module,
    eval_fn: Callable[[nn.Module], float],
    sparsity: float,
    *,
    criterion: str = "magnitude",
    granularity: str = "unstructured",
    data: Any = None,
    include: Any = None,
    exclude: Any = None,
    start: dict[str, float] | None = None,
    step: float = 0.05,
    seconds: float = 60.0,
    max_evals: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], list[float]]:
    """Per-layer sparsities found by search (EvoPress-style level swaps): from ``start`` (else
    uniform), repeatedly move ``step`` of sparsity from one layer to another of the same size
    (the budget stays exact), evaluate the candidate with ``eval_fn`` (a loss on calibration
    data), and keep it when the loss drops; stops after ``seconds`` or ``max_evals``. Returns
    the sparsities and the loss after each accepted move (first: the start). The model is left
    bit-identical.
    """
    targets = select_targets(model, include, exclude)
    masker = _Masker(model, targets, criterion, granularity, data, seed)
    level = dict(start) if start else {t.qualname: sparsity for t in targets}
    by_name = {t.qualname: t for t in targets}
    dense = {t.qualname: t.weight.detach().clone() for t in targets}
    cache: dict[tuple[str, float], torch.Tensor] = {}

    def weight(name: str, s: float) -> torch.Tensor:
        k = (name, round(s, 6))
        if k not in cache:
            if s <= 1e-9:
                cache[k] = dense[name]
            else:  # pruned from the dense weight, not from the candidate in place
                by_name[name].weight.data.copy_(dense[name])
                cache[k] = masker.pruned(by_name[name], s)
        return cache[k]

    def evaluate(levels: dict[str, float]) -> float:
        for n, s in levels.items():
            by_name[n].weight.data.copy_(weight(n, s))
        return float(eval_fn(model))

    sizes: dict[int, list[str]] = {}
    for t in targets:
        sizes.setdefault(t.weight.numel(), []).append(t.qualname)
    pools = [names for names in sizes.values() if len(names) > 1]
    if not pools:
        raise ConfigError("search allocation needs at least two targets of the same size")
    gen = torch.Generator().manual_seed(seed)
    deadline = time.monotonic() + seconds
    evals = 0
    try:
        with torch.no_grad():
            best = evaluate(level)
            history = [best]
            while time.monotonic() < deadline and (max_evals is None or evals < max_evals):
                pool = pools[int(torch.randint(len(pools), (1,), generator=gen))]
                i, j = torch.randperm(len(pool), generator=gen)[:2].tolist()
                up, down = pool[i], pool[j]
                if level[up] + step >= 0.99 or level[down] - step < 0:
                    evals += 1
                    continue
                cand = {**level, up: level[up] + step, down: level[down] - step}
                loss = evaluate({up: cand[up], down: cand[down]})
                evals += 1
                if loss < best:
                    level, best = cand, loss
                    history.append(best)
                else:
                    evaluate({up: level[up], down: level[down]})
    finally:
        for n, w in dense.items():
            by_name[n].weight.data.copy_(w)
    return level, history


def apply_levels(
    model: nn.Module,
    levels: dict[str, float],
    criterion: str = "magnitude",
    granularity: str = "unstructured",
    data: Any = None,
    seed: int = 0,
) -> None:
    """Attach masks pruning each named layer to its level (e.g. from :func:`layer_sparsities`)
    with ``criterion``, scored on the dense model."""
    from ..masks import record_granularity, shrink_mask

    targets = [t for t in select_targets(model) if t.qualname in levels]
    masker = _Masker(model, targets, criterion, granularity, data, seed)
    pruned = {t.qualname: masker.pruned(t, levels[t.qualname]) for t in targets}
    for t in targets:
        keep = pruned[t.qualname] != 0
        t.weight.data.copy_(pruned[t.qualname])
        shrink_mask(t.module, t.param, keep)
        record_granularity(t.module, t.param, masker.granularity.spec)
