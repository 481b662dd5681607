"""``scope="sensitivity"``: per-layer sparsities from measured sensitivity curves, meeting the
global budget at the least predicted loss."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..granularity import Granularity
from .base import ALLOCATIONS, Allocation, exact_counts

#: curves for six layers ``layers.{0,1,2}.fc{0,1}.weight`` (deeper layers more sensitive)
EXAMPLE: dict[str, Any] = {
    "sparsities": [0.3, 0.6, 0.9],
    "baseline": 0.0,
    "metric": {
        f"layers.{i}.fc{j}.weight": [0.01 * (i + 1), 0.05 * (i + 1) ** 2, 0.3 * (i + 1) ** 2]
        for i in range(3)
        for j in range(2)
    },
    "sizes": {f"layers.{i}.fc{j}.weight": (8 + 3 * j) * 16 for i in range(3) for j in range(2)},
    "layers": {f"layers.{i}.fc{j}.weight": [f"layers.{i}.fc{j}.weight"] for i in range(3)
               for j in range(2)},
}  # fmt: skip


def read_curves(curves: str | dict[str, Any]) -> dict[str, Any]:
    """The curves (a :meth:`Sensitivity.to_dict`), given inline or as a JSON file: one written by
    :meth:`Sensitivity.save`, ``prunekit analyze``'s ``analysis.json``, or a cache file of
    :func:`prunekit.sensitivity` holding one sweep."""
    if isinstance(curves, dict):
        return _checked(curves, "the inline curves")
    path = curves
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"scope='sensitivity': curves file {path!r} does not exist; write one with "
            "pk.sensitivity(..., cache=FILE), Sensitivity.save(FILE) or `prunekit analyze`"
        )
    try:
        doc = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"scope='sensitivity': {path} is not a JSON file ({e})") from None
    if isinstance(doc, dict) and isinstance(doc.get("sensitivity"), dict):  # analysis.json
        doc = doc["sensitivity"]
    elif isinstance(doc, dict) and "sparsities" not in doc:  # a cache: {key: {..., "curves"}}
        sweeps = [v["curves"] for v in doc.values() if isinstance(v, dict) and "curves" in v]
        if len(sweeps) != 1:
            raise ConfigError(
                f"scope='sensitivity': {path} holds {len(sweeps)} complete sweeps (keys "
                f"{sorted(doc)[:4]}); save the one to use with Sensitivity.save(FILE)"
            )
        doc = sweeps[0]
    return _checked(doc, path)


def _checked(doc: Any, where: str) -> dict[str, Any]:
    from ..analysis.sensitivity import Sensitivity

    try:
        sens = Sensitivity.from_dict(doc)
        bad = [u for u in sens.metric if len(sens.metric[u]) != len(sens.sparsities)]
        if bad or set(sens.sizes) != set(sens.metric) or not sens.sparsities:
            raise ValueError(f"units {bad or sorted(set(sens.sizes) ^ set(sens.metric))}")
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(
            f"scope='sensitivity': {where} is not a sensitivity sweep (fields sparsities, "
            f"baseline, metric, sizes, layers): {e}"
        ) from None
    return doc


@ALLOCATIONS.register("sensitivity")
@dataclass(frozen=True)
class SensitivityAllocation(Allocation):
    """Each layer's sparsity from measured curves of a metric against that layer's (or its
    block's) sparsity (:func:`prunekit.sensitivity`): the budget is filled where the next
    increment of sparsity costs the least predicted loss per pruned unit
    (:func:`prunekit.analysis.sensitivity.allocate`), then rounded to exact unit counts whose
    total is the global budget. ``curves`` is the JSON file holding the sweep (or the sweep
    itself, a :meth:`Sensitivity.to_dict`); every pruned layer must be in it (layers of a block
    share its level). Levels stay within the measured grid.
    """

    examples: ClassVar[tuple] = ({"type": "sensitivity", "curves": EXAMPLE},)
    needs_scores: ClassVar[bool] = True  # needs every layer's unit count before pruning

    curves: str | dict = "sensitivity.json"

    def supports(self, granularity: Granularity) -> str | None:
        reason = super().supports(granularity)
        if reason is None:
            try:
                read_curves(self.curves)  # a bad file fails when the config is resolved
            except ConfigError as e:
                return str(e)
        return reason

    def layer_sparsities(self, units: dict[str, torch.Tensor], sparsity: float) -> dict[str, float]:
        from ..analysis.sensitivity import Sensitivity, allocate

        sens = Sensitivity.from_dict(read_curves(self.curves))
        wanted = set(units)
        chosen = [u for u in sens.metric if set(sens.layers.get(u, [u])) <= wanted]
        covered = {layer for u in chosen for layer in sens.layers.get(u, [u])}
        missing = sorted(wanted - covered)
        if missing:
            raise ConfigError(
                f"scope='sensitivity': {self.curves} has no curve for {missing[:5]}"
                f"{' and more' if len(missing) > 5 else ''}; measure them with pk.sensitivity "
                f"(its units: {sorted(sens.metric)[:5]})"
            )
        part = Sensitivity(
            sens.sparsities, sens.baseline, {u: sens.metric[u] for u in chosen},
            {u: sens.sizes[u] for u in chosen}, {u: sens.layers.get(u, [u]) for u in chosen},
            higher_is_better=sens.higher_is_better,
        )  # fmt: skip
        level = allocate(part, sparsity)
        names = list(units)
        per_layer = {layer: level[u] for u in chosen for layer in part.layers[u]}
        numel = torch.tensor([units[n].numel() for n in names], dtype=torch.float64)
        target = torch.tensor([per_layer[n] for n in names], dtype=torch.float64)
        limit = (numel * max(sens.sparsities)).floor().minimum(numel - 1)
        counts = exact_counts(target * numel, round(sparsity * float(numel.sum())), limit)
        return {n: counts[i] / units[n].numel() for i, n in enumerate(names)}
