"""PruneConfig: the job. What to prune, how, and when; also the recipe format (YAML or JSON).

One definition of the fields serves the keyword API (``pk.prune(model, sparsity=...)``), the
config object (``pk.prune(model, PruneConfig(...))``), recipes (``to_dict``/``from_dict``,
``load_recipe``) and the command line (each field's ``metadata["help"]`` is its ``--help``).

Plugin fields (granularity, criterion, scope, schedule) take a string shorthand, a dict
``{"type": name, **params}`` or the plugin object; :meth:`PruneConfig.to_dict` writes strings as
strings and objects as dicts, so ``PruneConfig.from_dict(c.to_dict()) == c``. Module types in
``include``/``exclude`` are written ``{"module": "torch.nn.Linear"}`` and read back only from an
allow-list (``torch.nn`` layer classes, transformers' ``Conv1D``): a recipe never imports code.

This module imports no torch at import time, so the CLI can build its options quickly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, check_fraction, did_you_mean
from .schedule import OneShot, Schedule

if TYPE_CHECKING:
    from .allocation import Allocation
    from .criteria import Criterion
    from .granularity import Granularity
    from .reconstruct.block import Reconstruction

#: the recipe format's version; ``from_dict`` refuses newer ones
VERSION = 1
#: recipes larger than this are refused before parsing
MAX_RECIPE_BYTES = 1 << 20


def yes_no(text: str) -> bool:
    """A boolean command-line value: yes/true/1 or no/false/0."""
    value = str(text).strip().lower()
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off"):
        return False
    raise ConfigError(f"expected yes or no, got {text!r}")


def _field(default: Any, help: str, **cli: Any) -> Any:
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class PruneConfig:
    """Settings of one pruning job. The constructor stores (a plugin given as a dict becomes its
    object); :meth:`resolve` validates everything."""

    sparsity: float | None = _field(
        None,
        "fraction of the units (weights, blocks, channels, heads) to remove, in [0, 1); "
        "optional for N:M, where the pattern fixes it",
        type=float,
    )
    granularity: str | dict | Granularity = _field(
        "unstructured",
        "which weights fall together: unstructured, N:M (e.g. 2:4), block:RxC (e.g. block:4x4), "
        "channel, head, ... (or a JSON object with options, e.g. "
        '\'{"type": "channel", "round_to": 8}\')',
        plugin="granularity",
    )
    criterion: str | dict | Criterion = _field(
        "magnitude",
        "how important each weight is (a name, or a JSON object with parameters, e.g. "
        '\'{"type": "sparsegpt", "damp": 0.05}\')',
        plugin="criterion",
    )
    scope: str | dict | Allocation = _field(
        "layer",
        "how the budget is spread over layers: layer (the same everywhere), global (one "
        "threshold), owl (outlier-weighted), ... or a JSON object with options",
        plugin="scope",
    )
    schedule: str | dict | Schedule = field(
        default_factory=OneShot,
        metadata={
            "help": "when to prune, stepped by Pruner.step(): oneshot, or a JSON object such as "
            '\'{"type": "cubic", "start": 0, "end": 1000, "every": 50}\'',
            "plugin": "schedule",
        },
    )
    include: Sequence[Any] | str | type | None = _field(
        None,
        "prune only modules whose qualified name matches this regex (repeatable)",
        selectors=True,
    )
    exclude: Sequence[Any] | str | type | None = _field(
        None,
        "never prune modules whose qualified name matches this regex (repeatable)",
        selectors=True,
    )
    seed: int = _field(0, "seed of random criteria and tie-breaking", type=int)
    reconstruct: str | dict | Reconstruction | None = _field(
        None,
        "after each block is masked, tune its kept weights towards the dense block's output: "
        "block, or a JSON object with options, e.g. "
        '\'{"type": "block", "steps": 40, "lr": 0.0003}\' (element granularities)',
        plugin="reconstruct",
    )
    refine: bool = _field(
        False,
        "swap pruned and kept weights within rows while that lowers each layer's "
        "reconstruction error (exact row and N:M counts; element granularities)",
        type=yes_no,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("selectors") and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))  # equal after a round trip
            elif "plugin" in f.metadata and isinstance(value, dict):
                object.__setattr__(self, f.name, _plugin(f.name, value))

    # -- validation ------------------------------------------------------------------------
    def resolve(self) -> Resolved:
        """Parse every plugin and check that they work together; raise :class:`ConfigError`
        naming the problem and the valid choices. The model is not needed (nor touched)."""
        from .allocation import ALLOCATIONS
        from .criteria import CRITERIA
        from .targets import check_selectors

        gran = _plugin("granularity", self.granularity)
        criterion = _plugin("criterion", self.criterion)
        allocation = _plugin("scope", self.scope)
        schedule = _plugin("schedule", self.schedule)
        reconstruct = None if self.reconstruct is None else _plugin("reconstruct", self.reconstruct)
        if not isinstance(self.refine, bool):
            raise ConfigError(f"refine must be True or False, got {self.refine!r}")
        if (reconstruct is not None or self.refine) and gran.structured:
            raise ConfigError(
                f"reconstruct and refine work on element granularities (unstructured, N:M, "
                f"block:RxC), not {gran.spec!r}"
            )
        if self.refine and gran.spec != "unstructured" and not hasattr(gran, "m"):
            raise ConfigError(
                f"refine swaps single weights within rows: it serves unstructured and N:M, "
                f"not {gran.spec!r}"
            )
        for plugin, reason in (
            (CRITERIA.name_of(type(criterion)), criterion.supports(gran)),
            (f"scope={ALLOCATIONS.name_of(type(allocation))!r}", allocation.supports(gran)),
        ):
            if reason is not None:
                raise ConfigError(f"{plugin} cannot serve granularity {gran.spec!r}: {reason}")
        check_selectors("include", self.include)
        check_selectors("exclude", self.exclude)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        fixed = gran.fixed_sparsity
        if fixed is None:
            if self.sparsity is None:
                raise ConfigError(f"sparsity is required for granularity {gran.spec!r}")
            sparsity = check_fraction("sparsity", self.sparsity)
        elif self.sparsity is None:
            sparsity = fixed
        else:
            check_fraction("sparsity", self.sparsity)
            if abs(float(self.sparsity) - fixed) > 1e-9:
                raise ConfigError(
                    f"sparsity {self.sparsity} contradicts {gran.spec}, which fixes it at "
                    f"{fixed:g}; omit sparsity or pass {fixed:g}"
                )
            sparsity = fixed
        return Resolved(sparsity, gran, criterion, allocation, schedule, reconstruct, self.refine)

    # -- recipes ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-ready dict that :meth:`from_dict` turns back into an equal config.

        The config is validated first (an invalid config has no recipe).
        """
        from .plugin import to_dict

        self.resolve()
        out: dict[str, Any] = {"version": VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "plugin" in f.metadata and not isinstance(value, (str, type(None))):
                value = to_dict(value, _kind(f.name)[0])
            elif f.metadata.get("selectors"):
                value = _selectors_to_json(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        """The inverse of :meth:`to_dict`; missing keys take their defaults."""
        if not isinstance(data, dict):
            raise ConfigError(f"a recipe must be a mapping of options, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
            raise ConfigError(
                f"recipe version {version!r} is not supported (this prunekit reads 1..{VERSION})"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown recipe keys {unknown}{did_you_mean(str(unknown[0]), names)}; "
                f"valid keys: {', '.join(names)}"
            )
        for f in dataclasses.fields(cls):
            if f.name in data and f.metadata.get("selectors"):
                data[f.name] = _selectors_from_json(f.name, data[f.name])
        return cls(**data)  # plugin dicts become objects in __post_init__

    def replace(self, **changes: Any) -> PruneConfig:
        """A copy with ``changes`` (field names are checked)."""
        return _replace(self, changes)


def _replace(config: PruneConfig, changes: dict[str, Any]) -> PruneConfig:
    names = [f.name for f in dataclasses.fields(PruneConfig)]
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r}{did_you_mean(unknown[0], names)}; "
            f"valid options: {', '.join(names)}"
        )
    return dataclasses.replace(config, **changes)


def make_config(config: PruneConfig | float | None, fields: dict[str, Any]) -> PruneConfig:
    """``pk.prune``'s arguments as one config: a PruneConfig (``fields`` override it), or a
    sparsity (or None) plus keyword fields."""
    if isinstance(config, PruneConfig):
        return _replace(config, fields)
    if config is None or (isinstance(config, (int, float)) and not isinstance(config, bool)):
        if config is not None and "sparsity" in fields:
            raise ConfigError("sparsity is given twice (positionally and as a keyword)")
        base = {} if config is None else {"sparsity": config}
        return _replace(PruneConfig(), {**base, **fields})
    raise ConfigError(
        f"expected a PruneConfig or a sparsity, got {type(config).__name__}: {config!r}"
    )


def load_recipe(path: str | Path) -> PruneConfig:
    """A config from a YAML or JSON recipe file (YAML is read with ``safe_load``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} is not a file")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise ConfigError(f"recipe {str(path)!r} is {size} bytes; recipes are at most 1 MiB")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML or JSON: {e}") from None
    return PruneConfig.from_dict({} if data is None else data)


def dump_recipe(config: PruneConfig) -> str:
    """The config as a YAML recipe."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


@dataclass(frozen=True)
class Resolved:
    """A validated config: parsed plugins and the final sparsity."""

    sparsity: float
    granularity: Granularity
    criterion: Criterion
    allocation: Allocation
    schedule: Schedule
    reconstruct: Reconstruction | None = None
    refine: bool = False


def _kind(field_name: str) -> tuple[Any, type]:
    """The registry and base class of a plugin field."""
    from .allocation import ALLOCATIONS, Allocation
    from .criteria import CRITERIA, Criterion
    from .granularity import GRANULARITIES, Granularity
    from .reconstruct.block import RECONSTRUCTIONS, Reconstruction
    from .schedule import SCHEDULES

    return {
        "granularity": (GRANULARITIES, Granularity),
        "criterion": (CRITERIA, Criterion),
        "scope": (ALLOCATIONS, Allocation),
        "schedule": (SCHEDULES, Schedule),
        "reconstruct": (RECONSTRUCTIONS, Reconstruction),
    }[field_name]


def _plugin(field_name: str, value: Any) -> Any:
    """The plugin object a field's value (shorthand, dict or object) stands for."""
    from .granularity import parse_granularity
    from .plugin import from_value

    if field_name == "granularity":  # specs such as "2:4" parse by pattern
        return parse_granularity(value)
    registry, base = _kind(field_name)
    return from_value(value, registry, base)


def _selectors_to_json(value: Any) -> Any:
    def one(s: Any) -> Any:
        return {"module": f"{s.__module__}.{s.__qualname__}"} if isinstance(s, type) else s

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, type):
        return one(value)
    return [one(s) for s in value]


def _selectors_from_json(name: str, value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _module_type(name, value)
    if isinstance(value, (list, tuple)):
        return tuple(_module_type(name, s) if isinstance(s, dict) else s for s in value)
    raise ConfigError(f"{name} must be a regex, a list of regexes or module types, got {value!r}")


def _module_type(name: str, entry: dict[str, Any]) -> type:
    """A module class from ``{"module": "torch.nn.Linear"}``, through the allow-list only."""
    allowed = allowed_module_types()
    qualified = entry.get("module") if set(entry) == {"module"} else None
    if qualified not in allowed:
        raise ConfigError(
            f"{name} entry {json.dumps(entry)} names no allowed module type; recipes may name "
            "torch.nn layer classes (e.g. torch.nn.Linear) or transformers' Conv1D, or select by "
            "name with a regex"
        )
    return allowed[qualified]


def allowed_module_types() -> dict[str, type]:
    """The module classes a recipe may name: ``torch.nn`` layers and transformers' ``Conv1D``."""
    from torch import nn

    out: dict[str, type] = {}
    for name, cls in vars(nn).items():
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            out[f"torch.nn.{name}"] = cls  # the public spelling, for hand-written recipes
            out[f"{cls.__module__}.{cls.__qualname__}"] = cls
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        pass
    else:
        out[f"{Conv1D.__module__}.{Conv1D.__qualname__}"] = Conv1D
    return out
