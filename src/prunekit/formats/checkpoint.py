"""``pk.save`` and ``pk.load``: a checkpoint directory of compressed safetensors plus one header.

Layout of ``DIR``:

* the weights: every tensor of ``model.state_dict()``, encoded by its format. A dense tensor is
  stored under its own name; the parts of a compressed one as ``"<name>::<part>"``. A checkpoint
  whose tensors are all dense (``dense=True``) names this file ``model.safetensors``, which plain
  ``transformers`` reads; one with compressed tensors names it ``prunekit.safetensors``, which
  ``transformers`` does not read, so ``from_pretrained`` raises instead of initialising the
  compressed tensors at random.
* ``prunekit.json``: the library version, each tensor's format, dtype, shape, mask and metadata,
  the shape manifest, the pruning config, the report, storage sizes, the SHA-256 of every other
  file, and a checksum of itself.
* ``config.json``: a Hugging Face model's config (so ``pk.load(DIR)`` can rebuild the model, and
  with ``dense=True`` plain ``transformers`` can load the directory).

Writes are atomic. Every file is first written under a temporary name; ``prunekit.json`` is then
renamed into place (the commit), then the others. It names the temporary files it commits, so if
a crash falls between the renames the loader still finds the committed files. A crash before the
commit leaves the earlier checkpoint untouched. Saves into one directory hold its exclusive lock
(:mod:`.dirlock`) and loads a shared one, so concurrent saves (every rank of a distributed job
calling ``pk.save``) leave the last writer's complete checkpoint; only rank 0 needs to save.

Loading is safe: JSON and safetensors only, never pickle. Every header field is checked against the
tensors and the model, every tensor is decoded and range-checked, the manifest and the masks are
checked, and only then is the caller's model touched; any inconsistency raises
:class:`~prunekit.errors.CheckpointError` and leaves the model as it was. Declared shapes must
match the model (the instance passed, or the class rebuilt from a checksummed ``config.json``),
and the manifest may only shrink it, so the model bounds every allocation. SHA-256 checksums of
every file catch the corruption that no structural check can see, such as a flipped bit in a
weight.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, ConfigError, PrunekitError
from ..granularity import parse_granularity
from ..masks import MaskState, record_granularity, shrink_mask
from ..provenance import restore as restore_provenance
from ..targets import is_hf_conv1d, is_prunable
from .auto import AUTO, encode, worth_compressing
from .base import DTYPES, FORMATS, dtype_name
from .config_fit import misdescribes
from .dirlock import locked
from .header import (
    COMPRESSED_FILE,
    HEADER_FILE,
    HF_CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_HEADER_BYTES,
    MODEL_FILE,
    SCHEMA,
    WEIGHT_FILES,
    checksum,
    read_header,
    read_json,
    sha256_file,
    storage_summary,
    weights_file,
)
from .manifest import plan_shape_manifest, shape_manifest
from .maskrecord import MASK_PART, decode_mask, encode_mask

SEP = "::"
_TEMP = re.compile(
    r"\.pk-[0-9a-f]{12}\.(model\.safetensors|prunekit\.safetensors|config\.json|prunekit\.json)"
    r"\.tmp"
)
_RESERVED = {"prunekit", "tensors", "manifest", "config", "report", "storage", "files", "checksum"}


def part_key(name: str, part: str) -> str:
    """The safetensors key of one part of tensor ``name``."""
    return f"{name}{SEP}{part}" if part else name


# ---- save --------------------------------------------------------------------------------------


def _identity(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _effective_state(
    model: nn.Module,
) -> tuple[dict[str, torch.Tensor | str], dict[str, torch.Tensor]]:
    """``model.state_dict()`` with masks applied (pruned entries exactly ``+0.0``), and the masks
    by the name of the parameter they belong to.

    A tensor seen under an earlier name (tied weights) maps to that name instead.
    """
    state = model.state_dict()
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"state_dict entry {name!r} is not a tensor; it cannot be saved")
        if t.is_meta:
            raise ConfigError(
                f"{name} is on the meta device (it has a shape but no values): materialise the "
                "model first (model.to_empty(device='cpu') and load its weights)"
            )
    masks = {q: m for q, _, _, m in MaskState(model).items() if q in state}
    by_identity = {_identity(state[q]): m for q, m in masks.items()}
    out: dict[str, torch.Tensor | str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        ident = _identity(t)
        if t.numel() and ident in seen:
            out[name] = seen[ident]
            continue
        seen[ident] = name
        mask = by_identity.get(ident)
        out[name] = t if mask is None else torch.where(mask, t, torch.zeros((), dtype=t.dtype))
    return out, masks


def _layouts(model: nn.Module) -> dict[str, list[int]]:
    """Per prunable weight, the permutation that puts the input dimension last (see targets)."""
    perms = {}
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not is_prunable(module) or not isinstance(w, torch.Tensor):
            continue
        key = f"{name}.weight" if name else "weight"
        if is_hf_conv1d(module) and w.dim() == 2:
            perms[key] = [1, 0]  # [in, out] -> [out, in]
        elif w.dim() > 2:
            perms[key] = [0, *range(2, w.dim()), 1]  # [out, in/g, *k] -> [out, *k, in/g]
    return perms


def _config_dict(config: Any) -> dict[str, Any] | None:
    if config is None or isinstance(config, dict):
        return config
    to_dict = getattr(config, "to_dict", None)  # PruneConfig
    if to_dict is None:
        to_dict = getattr(getattr(config, "config", None), "to_dict", None)  # Pruner
    if to_dict is None:
        raise ConfigError(f"config must be a PruneConfig, a Pruner or a dict, got {config!r}")
    return to_dict()


def _report(model: nn.Module) -> dict[str, Any] | None:
    from ..analysis.report import report

    try:
        return report(model).to_dict()
    except PrunekitError:  # nothing prunable in this model
        return None


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on every platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hf_config_json(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(config, "to_json_string", None)):
        return None
    config = copy.deepcopy(config)
    config.architectures = [type(model).__name__]
    return config.to_json_string()


def _warn_if_not_transformers_loadable(model: nn.Module) -> None:
    """A plain export of an HF model whose config.json cannot describe it: say so."""
    if misdescribes(model):
        warnings.warn(
            "config.json cannot describe this model's shapes (was it shrunk? some architectures "
            "derive a size from others, and layers may differ): plain transformers refuses the "
            "folder (or, where only a norm's epsilon differs, computes slightly different "
            "outputs); pk.load(DIR) loads it exactly",
            stacklevel=3,
        )


def _encode_state(
    model: nn.Module, fmt: str
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Safetensors parts and header entries for every tensor of the model's state."""
    perms = _layouts(model)
    parts: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    state, masks = _effective_state(model)
    for name, t in state.items():
        if SEP in name:
            raise ConfigError(
                f"state_dict key {name!r} contains {SEP!r}, which checkpoints reserve"
            )
        if isinstance(t, torch.Tensor) and dtype_name(t.dtype) not in DTYPES:
            raise ConfigError(
                f"{name}: dtype {t.dtype} cannot be saved; supported: {sorted(DTYPES)}"
            )
        if isinstance(t, str):  # tied weights are stored once
            entries[name] = {k: v for k, v in entries[t].items() if k != "mask"} | {"alias": t}
        else:
            t = t.detach().cpu()
            if t.is_floating_point():
                t = t.masked_fill(t == 0, 0)  # -0.0 -> +0.0, so that pruned weights compress
            perm = perms.get(name)
            fmt_name, enc = encode(t.permute(perm) if perm else t, fmt)
            if fmt_name == "dense":  # dense tensors keep their own layout (and their plain name)
                perm, enc = None, encode(t, "dense")[1]
            for pname, p in enc.parts.items():
                parts[part_key(name, pname)] = p.contiguous()
            entries[name] = {
                "format": fmt_name, "dtype": dtype_name(t.dtype),
                "shape": list(t.shape), "meta": enc.meta, "nnz": int(torch.count_nonzero(t)),
                "bytes": enc.nbytes, "finite": bool(torch.isfinite(t).all()),
                **({"perm": perm} if perm else {}),
            }  # fmt: skip
        if name in masks:
            stored = state[entries[name].get("alias", name)]
            kind, packed = encode_mask(stored.detach().cpu(), masks[name])
            entries[name]["mask"] = kind
            if packed is not None:
                parts[part_key(name, MASK_PART)] = packed
    return parts, entries


def _pays(summary: dict[str, Any]) -> bool:
    """Whether the compressed formats ``"auto"`` chose (``summary``: their storage summary)
    save enough to give up a plain file."""
    return summary["formats"].keys() == {"dense"} or worth_compressing(
        summary["bytes"], summary["dense_bytes"]
    )


def _checkpoint_directory(directory: str | os.PathLike) -> Path:
    """``directory``, created if needed; a clear error where it cannot be one."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            f"{directory} is a file: pk.save writes a checkpoint directory; pass a new or "
            "existing directory"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the checkpoint directory {directory}: {e}") from None
    return directory


def save(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    format: str = AUTO,
    dense: bool = False,
    config: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``directory`` (created if needed), atomically; returns its path.

    ``format`` is ``"auto"`` (smallest per tensor; every tensor dense, the plain file below, when
    that saves less than 1% of the dense size, as after a structured prune) or a registered format
    name applied to every tensor it can hold; ``dense=True`` stores plain tensors under their own
    names in ``model.safetensors``, so that a Hugging Face model loads with ``transformers``'
    ``from_pretrained``. Compressed tensors go to ``prunekit.safetensors``, which ``transformers``
    does not read (it raises rather than load random weights). A masked model is saved with its
    masks applied, and the masks are recorded so that :func:`load` re-attaches them. ``config`` (a
    PruneConfig, Pruner or dict) and ``extra`` (JSON-able, merged into ``prunekit.json``) are
    recorded as given.

    Saving into a directory another process is saving into is safe: the last save wins, whole. In
    distributed training only rank 0 needs to save (every rank holds the same weights and masks).
    """
    from .. import __version__

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, "_pk_inference_report"):  # runtime.fuse.REPORT_ATTR
        raise ConfigError(
            "this model comes from optimize_for_inference (BatchNorm folded away, its state_dict "
            "no longer the original class's): save the model you optimised, or export_onnx this one"
        )
    fmt = "dense" if dense else format
    if fmt != AUTO:
        FORMATS.get(fmt)
    extra = dict(extra or {})
    clash = _RESERVED & set(extra)
    if clash:
        raise ConfigError(f"extra may not set the reserved keys {sorted(clash)}")

    parts, entries = _encode_state(model, fmt)
    storage = storage_summary(entries)
    if fmt == AUTO and not _pays(storage):
        parts, entries = _encode_state(model, "dense")  # a shrunk model: a plain, portable file
        storage = storage_summary(entries)
    header: dict[str, Any] = {
        "prunekit": {"version": __version__, "schema": SCHEMA},
        "tensors": entries,
        "manifest": shape_manifest(model),
        "config": _config_dict(config),
        "report": _report(model),
        "storage": storage,
        **extra,
    }
    try:
        json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config and extra must be JSON-serialisable: {e}") from None
    plain = all(e["format"] == "dense" for e in entries.values())
    hf_config = _hf_config_json(model)
    if plain and hf_config is not None:
        _warn_if_not_transformers_loadable(model)
    directory = _checkpoint_directory(directory)
    with locked(directory, shared=False):
        _write(directory, MODEL_FILE if plain else COMPRESSED_FILE, parts, header, hf_config)
    return directory


def _write(
    directory: Path,
    weights: str,
    parts: dict[str, torch.Tensor],
    header: dict[str, Any],
    hf_config: str | None,
) -> None:
    """Write temporaries, commit the header, then move the rest into place (under the lock)."""
    token = secrets.token_hex(6)
    pending = {weights: directory / f".pk-{token}.{weights}.tmp"}
    header_tmp = directory / f".pk-{token}.{HEADER_FILE}.tmp"
    try:
        save_file(parts, pending[weights], metadata={"format": "pt"})
        with open(pending[weights], "rb+") as f:
            os.fsync(f.fileno())
        if hf_config is not None:
            pending[HF_CONFIG_FILE] = directory / f".pk-{token}.{HF_CONFIG_FILE}.tmp"
            _write_durably(pending[HF_CONFIG_FILE], hf_config.encode())
        header["files"] = {
            name: {"sha256": sha256_file(p), "bytes": p.stat().st_size, "pending": p.name}
            for name, p in pending.items()
        }
        header["checksum"] = checksum(header)
        data = json.dumps(header, indent=1).encode()
        if len(data) > MAX_HEADER_BYTES:
            raise ConfigError(
                f"this model's {HEADER_FILE} would take {len(data)} bytes, more than the "
                f"{MAX_HEADER_BYTES} a checkpoint may hold (too many tensors or too large extra)"
            )
        _write_durably(header_tmp, data)
        os.replace(header_tmp, directory / HEADER_FILE)  # the commit
    except BaseException:
        for p in [header_tmp, *pending.values()]:
            p.unlink(missing_ok=True)
        raise
    for other in WEIGHT_FILES:  # the other weights file belongs to the earlier checkpoint
        if other != weights:
            (directory / other).unlink(missing_ok=True)
    for name, p in pending.items():
        os.replace(p, directory / name)
    _fsync_dir(directory)
    for stale in directory.iterdir():  # temporaries of earlier, interrupted saves
        if _TEMP.fullmatch(stale.name):
            stale.unlink(missing_ok=True)


# ---- load --------------------------------------------------------------------------------------


def _committed_file(directory: Path, name: str, info: dict[str, Any], verify: bool) -> Path:
    """The file the header committed: its temporary if a save stopped between renames."""
    path = directory / info["pending"]
    if not path.is_file():
        path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{directory}: {name} is missing")
    if path.stat().st_size != info["bytes"]:
        raise CheckpointError(
            f"{path} is {path.stat().st_size} bytes, expected {info['bytes']}: truncated or "
            "replaced"
        )
    if verify and sha256_file(path) != info["sha256"]:
        raise CheckpointError(f"{path} does not match its recorded SHA-256: corrupt or modified")
    return path


def _read_parts(path: Path, entries: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    try:
        stored = load_file(path)
    except Exception as e:  # the safetensors parser's own errors, on untrusted bytes
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from None
    expected = {
        part_key(name, p)
        for name, e in entries.items()
        if "alias" not in e
        for p in FORMATS.get(e["format"]).part_names
    }
    expected |= {part_key(n, MASK_PART) for n, e in entries.items() if e.get("mask") == "bitmask"}
    if set(stored) != expected:
        odd = sorted(set(stored) ^ expected)[:5]
        raise CheckpointError(f"{path} does not hold the tensors its header lists (e.g. {odd})")
    return stored


def _read_hf_config(directory: Path, header: dict[str, Any], verify: bool) -> Any:
    if HF_CONFIG_FILE not in header["files"]:
        raise CheckpointError(
            f"{directory} holds no Hugging Face config; pass model=<a fresh instance of the saved "
            "model's class>"
        )
    info = header["files"][HF_CONFIG_FILE]
    return read_json(_committed_file(directory, HF_CONFIG_FILE, info, verify), MAX_CONFIG_BYTES)


def _changed_config_values(model: nn.Module, saved: Any) -> dict[str, int]:
    """The saved config.json sizes that differ from ``model.config``'s (a shrunk model's widths
    and head counts): positive integers, for keys the config has (None or an int there)."""
    config = getattr(model, "config", None)
    if saved is None or not callable(getattr(config, "to_dict", None)):
        return {}
    if not isinstance(saved, dict):
        raise CheckpointError(f"{HF_CONFIG_FILE} is not a JSON object")
    current = config.to_dict()
    return {
        k: v
        for k, v in saved.items()
        if k in current
        and isinstance(v, int)
        and not isinstance(v, bool)
        and v > 0
        and v != current[k]
        and (current[k] is None or type(current[k]) is int)
    }


def _build_hf_model(cfg: Any) -> nn.Module:
    """A fresh instance of the saved Hugging Face class, built from the saved config.

    Only a class that ``transformers`` itself defines is built (no remote code)."""
    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    if not (isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], str)):
        raise CheckpointError(f"{HF_CONFIG_FILE} does not name one model class in 'architectures'")
    try:
        import transformers
    except ImportError:
        raise CheckpointError(
            "this checkpoint is a Hugging Face model: install transformers "
            "(pip install prunekit[hf])"
        ) from None
    cls = getattr(transformers, archs[0], None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(f"transformers has no model class {archs[0]!r}")
    try:
        return cls._from_config(cls.config_class.from_dict(cfg)).eval()  # as from_pretrained
    except Exception as e:  # transformers validating an untrusted config
        raise CheckpointError(f"cannot build {archs[0]} from {HF_CONFIG_FILE}: {e}") from None


def _decode(name: str, e: dict[str, Any], stored: dict[str, torch.Tensor]) -> torch.Tensor:
    fmt = FORMATS.get(e["format"])()
    shape, perm = tuple(e["shape"]), e.get("perm")
    parts = {p: stored[part_key(name, p)] for p in fmt.part_names}
    enc_shape = tuple(shape[i] for i in perm) if perm else shape  # the layout it was encoded in
    try:
        t = fmt.decode(parts, e["meta"], enc_shape, DTYPES[e["dtype"]])
    except PrunekitError as err:
        raise CheckpointError(f"{name}: {err}") from None
    except (ValueError, IndexError, TypeError, OverflowError, RuntimeError) as err:
        raise CheckpointError(f"{name}: corrupt {e['format']} data: {err}") from None
    if perm:
        t = t.permute([perm.index(i) for i in range(len(perm))])
    if e.get("finite") is True and not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{name}: decodes to NaN or inf, but was saved finite")
    if int(torch.count_nonzero(t)) != e["nnz"]:
        raise CheckpointError(
            f"{name}: decodes to {int(torch.count_nonzero(t))} non-zeros, header says {e['nnz']}"
        )
    return t


def _kind(dtype: torch.dtype) -> str:
    return "float" if dtype.is_floating_point else "bool" if dtype == torch.bool else "int"


def _check_entries(
    model: nn.Module, entries: dict[str, dict[str, Any]], shapes: dict[str, tuple[int, ...]]
) -> None:
    """Every entry against the model: planned shape, dtype kind, and the layout a save writes."""
    state = model.state_dict()
    layouts = _layouts(model)
    for name, e in entries.items():
        planned = shapes.get(name, tuple(state[name].shape))
        if tuple(e["shape"]) != planned:
            raise CheckpointError(
                f"{name}: checkpoint shape {e['shape']} != model shape {list(planned)}"
            )
        if _kind(DTYPES[e["dtype"]]) != _kind(state[name].dtype):
            raise CheckpointError(
                f"{name}: a {e['dtype']} tensor cannot load into the model's {state[name].dtype}"
            )
        layout = None if e["format"] == "dense" else layouts.get(name)
        if "alias" not in e and e.get("perm") != layout:
            raise CheckpointError(
                f"{name}: stored in layout {e.get('perm')}, where a save writes {layout}"
            )


def _decode_masks(
    model: nn.Module,
    entries: dict[str, dict[str, Any]],
    decoded: dict[str, torch.Tensor],
    stored: dict[str, torch.Tensor],
) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """(module, parameter, mask) for every recorded mask, checked against its tensor."""
    out = []
    for name, e in entries.items():
        if "mask" not in e:
            continue
        mod_name, _, pname = name.rpartition(".")
        module = model.get_submodule(mod_name)
        if pname not in module._parameters:
            raise CheckpointError(f"{name}: a mask is recorded, but it is not a parameter")
        parts = {MASK_PART: stored.get(part_key(name, MASK_PART))}
        try:
            mask = decode_mask(e["mask"], decoded[name], parts)
        except PrunekitError as err:
            raise CheckpointError(f"{name}: {err}") from None
        out.append((module, pname, mask))
    return out


Rows = list[tuple[nn.Module, str, dict[str, Any]]]


def _granularities(rows: Rows) -> list[tuple[nn.Module, str, str]]:
    """Each pruned layer's granularity from the saved report's ``rows`` (for N:M checks),
    checked."""
    out = []
    for module, param, row in rows:
        spec = row["granularity"]
        try:
            parse_granularity(spec)
        except PrunekitError as e:
            raise CheckpointError(f"prunekit.json: report row {row['name']!r}: {e}") from None
        out.append((module, param, spec))
    return out


def _report_rows(model: nn.Module, report: Any) -> Rows:
    """``(module, parameter name, row)`` of each pruned layer's row in the saved report."""
    if report is None:
        return []
    rows = report.get("layers") if isinstance(report, dict) else None
    if not isinstance(rows, list):
        raise CheckpointError("prunekit.json: report.layers must be a list")
    modules = dict(model.named_modules())
    out = []
    for row in rows:
        name, spec = (row.get("name"), row.get("granularity")) if isinstance(row, dict) else (0, 0)
        if not isinstance(name, str) or not isinstance(spec, str):
            raise CheckpointError(f"prunekit.json: malformed report row {row!r:.80}")
        if spec == "-":
            continue
        mod_name, _, param = name.rpartition(".")
        module = modules.get(mod_name)
        if module is None or not isinstance(getattr(module, param, None), torch.Tensor):
            raise CheckpointError(f"prunekit.json: report names unknown parameter {name!r}")
        out.append((module, param, row))
    return out


def _shrunk_from(
    rows: Rows, report: Any, shapes: dict[str, list[int]]
) -> tuple[dict[str, list[int]], int | None]:
    """The pre-shrink shapes (qualified name -> shape) and parameter count the saved report
    (and its pruned layers' ``rows``) holds, checked against the checkpoint's ``shapes``."""
    before = {}
    for _, _, row in rows:
        shape, name = row.get("before"), row["name"]
        if shape is None:
            continue
        if (
            not isinstance(shape, list)
            or not all(isinstance(n, int) and n > 0 for n in shape)
            or len(shape) != len(shapes.get(name, ()))
        ):
            raise CheckpointError(
                f"prunekit.json: report row {name!r}: malformed before {shape!r:.80}"
            )
        before[name] = shape
    totals = report.get("totals", {}) if isinstance(report, dict) else {}
    if not isinstance(totals, dict):
        raise CheckpointError("prunekit.json: report.totals must be an object")
    params = totals.get("params_before")
    if params is not None and (not isinstance(params, int) or params <= 0):
        raise CheckpointError(
            f"prunekit.json: report.totals.params_before {params!r:.40} is not a count"
        )
    return before, params


@torch.no_grad()
def _adopt_dtype(model: nn.Module, name: str, dtype: torch.dtype) -> None:
    """Give ``model``'s tensor ``name`` the saved dtype, so that loading it is exact."""
    mod_name, _, attr = name.rpartition(".")
    module = model.get_submodule(mod_name)
    if attr in module._parameters:
        module._parameters[attr].data = module._parameters[attr].data.to(dtype)
    else:
        module._buffers[attr] = module._buffers[attr].to(dtype)


def load(
    directory: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    verify: bool = True,
    masks: bool = True,
    sparse: bool = False,
) -> nn.Module:
    """Load a checkpoint written by :func:`save` into ``model`` and return it.

    ``model`` is a freshly built instance of the saved model's class (a physically shrunk model is
    resized to the saved shapes through the shape manifest). Without it, a Hugging Face
    checkpoint rebuilds its class through ``transformers`` (no hub access, no remote code).
    Weights come back exactly, in their saved dtypes. The masks of a model saved masked are
    re-attached and enforced, so fine-tuning keeps every pruned weight at zero (``masks=False``
    loads the weights only). ``verify`` checks every file's SHA-256 (on by default). Everything is
    checked before ``model`` is touched: a load that raises leaves it as it was.
    ``sparse=True`` loads each ``nn.Linear`` weight stored N:M-packed straight onto the
    ``prunekit_nm`` kernel, with no dense weight built (see :mod:`prunekit.runtime.nm_load`).
    """
    directory = Path(directory)
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(sparse, bool):
        raise ConfigError(f"sparse must be True or False, got {sparse!r}")
    if not (directory / HEADER_FILE).is_file():
        raise CheckpointError(
            f"{directory} holds no prunekit checkpoint ({HEADER_FILE} is missing)"
        )
    with locked(directory, shared=True):  # no save may swap files while they are read
        header = read_header(directory, verify=verify)
        entries: dict[str, dict[str, Any]] = header["tensors"]
        name = weights_file(header)
        stored = _read_parts(
            _committed_file(directory, name, header["files"][name], verify), entries
        )
        has_cfg = model is None or HF_CONFIG_FILE in header["files"]
        cfg = _read_hf_config(directory, header, verify) if has_cfg else None
    config_values = _changed_config_values(model, cfg) if model is not None else {}
    model = _build_hf_model(cfg) if model is None else model
    state = model.state_dict()
    if any(t.is_meta for t in state.values()):
        raise ConfigError(
            "the model is on the meta device: build it on a real one (or model.to_empty("
            "device='cpu')) before loading a checkpoint into it"
        )
    missing, unexpected = (
        sorted(state.keys() - entries.keys()),
        sorted(entries.keys() - state.keys()),
    )
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    dtypes = {DTYPES[e["dtype"]] for e in entries.values()}
    plan = plan_shape_manifest(
        model, header["manifest"], {d for d in dtypes if d.is_floating_point}
    )
    _check_entries(model, entries, plan.shapes)
    packed = _packed_for_kernels(model, entries, stored) if sparse else {}
    decoded = {
        n: _decode(n, e, stored) for n, e in entries.items() if "alias" not in e and n not in packed
    }
    decoded.update({n: decoded[e["alias"]] for n, e in entries.items() if "alias" in e})
    dense_entries = {n: e for n, e in entries.items() if n not in packed}
    recorded_masks = _decode_masks(model, dense_entries, decoded, stored)
    rows = _report_rows(model, header.get("report"))
    granularities = _granularities(rows)
    shrunk_from = _shrunk_from(
        rows, header.get("report"), {n: e.get("shape", []) for n, e in entries.items()}
    )

    plan.apply()  # everything is checked: from here on the model changes
    from ..structure.heads import reattach

    reattach(model)  # what head pruning changed beyond shapes (nn.MultiheadAttention's class)
    for key, value in config_values.items():
        setattr(model.config, key, value)  # a shrunk model's widths and head counts
    state = model.state_dict()
    for n, t in decoded.items():
        if state[n].dtype != t.dtype:
            _adopt_dtype(model, n, t.dtype)
    try:
        result = model.load_state_dict(decoded, strict=not packed)
    except RuntimeError as e:
        raise CheckpointError(
            f"cannot load the checkpoint into {type(model).__name__}: {e}"
        ) from None
    if packed and (set(result.missing_keys) != packed.keys() or result.unexpected_keys):
        raise CheckpointError(f"cannot load the checkpoint into {type(model).__name__}: {result}")
    if masks:
        for module, pname, mask in recorded_masks:
            shrink_mask(module, pname, mask)
    for module, param, spec in granularities:
        record_granularity(module, param, spec)
    restore_provenance(model, *shrunk_from)
    if packed:
        from ..runtime.nm_load import install_packed

        install_packed(model, packed)
    return model


def _packed_for_kernels(
    model: nn.Module, entries: dict[str, dict[str, Any]], stored: dict[str, torch.Tensor]
) -> dict[str, dict[str, torch.Tensor]]:
    """``load(sparse=True)``: the N:M kernel's packed tensors of each weight that can skip the
    dense decode, by name (checked; nothing is changed yet)."""
    from ..runtime.nm_load import direct_nm_weights, packed_nm_weight

    names = direct_nm_weights(model, entries)
    if not names:
        warnings.warn(
            "pk.load(sparse=True): no nn.Linear weight is stored N:M-packed in a pattern the "
            "prunekit_nm kernel runs (or the kernel is not available); everything loads dense",
            stacklevel=3,
        )
    return {
        n: packed_nm_weight(n, entries[n], {p: stored[part_key(n, p)] for p in ("index", "values")})
        for n in sorted(names)
    }
