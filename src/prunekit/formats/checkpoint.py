"""``pk.save`` and ``pk.load``: a checkpoint directory of compressed safetensors plus one header.

Layout of ``DIR``:

* ``model.safetensors``: every tensor of ``model.state_dict()``, encoded by its format. A dense
  tensor is stored under its own name; the parts of a compressed one as ``"<name>::<part>"``.
* ``prunekit.json``: the library version, each tensor's format, dtype, shape and metadata, the
  shape manifest, the pruning config, the report, storage sizes, the SHA-256 of every other file,
  and a checksum of itself.
* ``config.json``: a Hugging Face model's config (so ``pk.load(DIR)`` can rebuild the model, and
  with ``dense=True`` plain ``transformers`` can load the directory).

Writes are atomic. Every file is first written under a temporary name; ``prunekit.json`` is then
renamed into place (the commit), then the others. It names the temporary files it commits, so if
a crash falls between the renames the loader still finds the committed files. A crash before the
commit leaves the earlier checkpoint untouched.

Loading is safe: JSON and safetensors only, never pickle. Every header field is checked against the
tensors and the model before anything is decoded, and every decoded part is range-checked; any
inconsistency raises :class:`~prunekit.errors.CheckpointError`. Declared shapes must match the
model (the instance passed, or the class rebuilt from a checksummed ``config.json``), and the
manifest may only shrink it, so the model bounds every allocation. SHA-256 checksums of every
file catch the corruption that no structural check can see, such as a flipped bit in a weight.
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
from ..masks import MaskState, record_granularity
from ..targets import is_hf_conv1d, is_prunable
from .auto import AUTO, encode
from .base import DTYPES, FORMATS, dtype_name
from .header import (
    HEADER_FILE,
    HF_CONFIG_FILE,
    MODEL_FILE,
    SCHEMA,
    checksum,
    read_header,
    read_json,
    sha256_file,
    storage_summary,
)
from .manifest import apply_shape_manifest, shape_manifest

SEP = "::"
_TEMP = re.compile(r"\.pk-[0-9a-f]{12}\.(model\.safetensors|config\.json|prunekit\.json)\.tmp")
_RESERVED = {"prunekit", "tensors", "manifest", "config", "report", "storage", "files", "checksum"}


def part_key(name: str, part: str) -> str:
    """The safetensors key of one part of tensor ``name``."""
    return f"{name}{SEP}{part}" if part else name


# ---- save --------------------------------------------------------------------------------------


def _identity(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _effective_state(model: nn.Module) -> dict[str, torch.Tensor | str]:
    """``model.state_dict()`` with masks applied (pruned entries exactly ``+0.0``).

    A tensor seen under an earlier name (tied weights) maps to that name instead.
    """
    state = model.state_dict()
    masks = {_identity(state[q]): m for q, _, _, m in MaskState(model).items() if q in state}
    out: dict[str, torch.Tensor | str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"state_dict entry {name!r} is not a tensor; it cannot be saved")
        ident = _identity(t)
        if t.numel() and ident in seen:
            out[name] = seen[ident]
            continue
        seen[ident] = name
        mask = masks.get(ident)
        out[name] = t if mask is None else torch.where(mask, t, torch.zeros((), dtype=t.dtype))
    return out


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
    """A dense export of a physically shrunk HF model no longer matches its config.json."""
    try:
        with torch.device("meta"):
            fresh = type(model)._from_config(model.config)
    except Exception:  # some classes cannot be built on the meta device: skip the check
        return
    fresh_shapes = {k: v.shape for k, v in fresh.state_dict().items()}
    if any(fresh_shapes.get(k) != v.shape for k, v in model.state_dict().items()):
        warnings.warn(
            "this model's shapes differ from what its config describes (was it shrunk?): plain "
            "transformers cannot load the dense export, but pk.load(DIR) can",
            stacklevel=3,
        )


def _encode_state(
    model: nn.Module, fmt: str
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Safetensors parts and header entries for every tensor of the model's state."""
    perms = _layouts(model)
    parts: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name, t in _effective_state(model).items():
        if SEP in name:
            raise ConfigError(
                f"state_dict key {name!r} contains {SEP!r}, which checkpoints reserve"
            )
        if isinstance(t, torch.Tensor) and dtype_name(t.dtype) not in DTYPES:
            raise ConfigError(
                f"{name}: dtype {t.dtype} cannot be saved; supported: {sorted(DTYPES)}"
            )
        if isinstance(t, str):  # tied weights are stored once
            entries[name] = {**entries[t], "alias": t}
            continue
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
    return parts, entries


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

    ``format`` is ``"auto"`` (smallest per tensor) or a registered format name applied to every
    tensor it can hold; ``dense=True`` stores plain tensors under their own names, so that a Hugging
    Face model loads with ``transformers``' ``from_pretrained``. A masked model is saved with its
    masks applied. ``config`` (a PruneConfig, Pruner or dict) and ``extra`` (JSON-able, merged
    into ``prunekit.json``) are recorded as given.
    """
    from .. import __version__

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    fmt = "dense" if dense else format
    if fmt != AUTO:
        FORMATS.get(fmt)
    extra = dict(extra or {})
    clash = _RESERVED & set(extra)
    if clash:
        raise ConfigError(f"extra may not set the reserved keys {sorted(clash)}")

    parts, entries = _encode_state(model, fmt)
    header: dict[str, Any] = {
        "prunekit": {"version": __version__, "schema": SCHEMA},
        "tensors": entries,
        "manifest": shape_manifest(model),
        "config": _config_dict(config),
        "report": _report(model),
        "storage": storage_summary(entries),
        **extra,
    }
    try:
        json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config and extra must be JSON-serialisable: {e}") from None

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    pending = {MODEL_FILE: directory / f".pk-{token}.{MODEL_FILE}.tmp"}
    hf_config = _hf_config_json(model)
    if dense and hf_config is not None:
        _warn_if_not_transformers_loadable(model)
    header_tmp = directory / f".pk-{token}.{HEADER_FILE}.tmp"
    try:
        save_file(parts, pending[MODEL_FILE], metadata={"format": "pt"})
        with open(pending[MODEL_FILE], "rb+") as f:
            os.fsync(f.fileno())
        if hf_config is not None:
            pending[HF_CONFIG_FILE] = directory / f".pk-{token}.{HF_CONFIG_FILE}.tmp"
            _write_durably(pending[HF_CONFIG_FILE], hf_config.encode())
        header["files"] = {
            name: {"sha256": sha256_file(p), "bytes": p.stat().st_size, "pending": p.name}
            for name, p in pending.items()
        }
        header["checksum"] = checksum(header)
        _write_durably(header_tmp, json.dumps(header, indent=1).encode())
        os.replace(header_tmp, directory / HEADER_FILE)  # the commit
    except BaseException:
        for p in [header_tmp, *pending.values()]:
            p.unlink(missing_ok=True)
        raise
    for name, p in pending.items():
        os.replace(p, directory / name)
    _fsync_dir(directory)
    for stale in directory.iterdir():  # temporaries of earlier, interrupted saves
        if _TEMP.fullmatch(stale.name):
            stale.unlink(missing_ok=True)
    return directory


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
    if set(stored) != expected:
        odd = sorted(set(stored) ^ expected)[:5]
        raise CheckpointError(f"{path} does not hold the tensors its header lists (e.g. {odd})")
    return stored


def _saved_config_values(
    model: nn.Module, directory: Path, header: dict[str, Any], verify: bool
) -> dict[str, Any]:
    """The saved config.json values that differ from ``model.config``'s (a shrunk model's
    widths and head counts), for keys the config has, with values of the same JSON type."""
    config = getattr(model, "config", None)
    if HF_CONFIG_FILE not in header["files"] or not callable(getattr(config, "to_dict", None)):
        return {}
    saved = read_json(
        _committed_file(directory, HF_CONFIG_FILE, header["files"][HF_CONFIG_FILE], verify)
    )
    if not isinstance(saved, dict):
        raise CheckpointError(f"{HF_CONFIG_FILE} is not a JSON object")
    current = config.to_dict()
    return {
        k: v
        for k, v in saved.items()
        if k in current
        and k != "architectures"
        and v != current[k]
        and (isinstance(v, int) and not isinstance(v, bool))
        and (current[k] is None or type(v) is type(current[k]))
        and v > 0
    }


def _build_hf_model(directory: Path, header: dict[str, Any], verify: bool) -> nn.Module:
    """A fresh instance of the saved Hugging Face class, built from the saved config."""
    if HF_CONFIG_FILE not in header["files"]:
        raise CheckpointError(
            f"{directory} holds no Hugging Face config; pass model=<a fresh instance of the saved "
            "model's class>"
        )
    cfg = read_json(
        _committed_file(directory, HF_CONFIG_FILE, header["files"][HF_CONFIG_FILE], verify)
    )
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
    directory: str | os.PathLike, model: nn.Module | None = None, *, verify: bool = True
) -> nn.Module:
    """Load a checkpoint written by :func:`save` into ``model`` and return it.

    ``model`` is a freshly built instance of the saved model's class (a physically shrunk model is
    resized to the saved shapes through the shape manifest). Without it, a Hugging Face
    checkpoint rebuilds its class through ``transformers`` (no hub access). Weights come back
    exactly, in their saved dtypes. ``verify`` checks every file's SHA-256 (on by default).
    """
    directory = Path(directory)
    header = read_header(directory, verify=verify)
    entries: dict[str, dict[str, Any]] = header["tensors"]
    path = _committed_file(directory, MODEL_FILE, header["files"][MODEL_FILE], verify)
    stored = _read_parts(path, entries)
    saved_config = None
    if model is None:
        model = _build_hf_model(directory, header, verify)
    elif not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    else:
        saved_config = _saved_config_values(model, directory, header, verify)
    keys = set(model.state_dict())
    missing, unexpected = sorted(keys - set(entries)), sorted(set(entries) - keys)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    apply_shape_manifest(model, header["manifest"])
    for key, value in (saved_config or {}).items():
        setattr(model.config, key, value)  # the shrunk model's widths and head counts
    state = model.state_dict()
    for name, e in entries.items():
        if tuple(e["shape"]) != tuple(state[name].shape):
            raise CheckpointError(
                f"{name}: checkpoint shape {e['shape']} != model shape {list(state[name].shape)}"
            )
    decoded = {n: _decode(n, e, stored) for n, e in entries.items() if "alias" not in e}
    decoded.update({n: decoded[e["alias"]] for n, e in entries.items() if "alias" in e})
    for name, t in decoded.items():
        if state[name].dtype != t.dtype:
            _adopt_dtype(model, name, t.dtype)
    try:
        model.load_state_dict(decoded, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"cannot load the checkpoint into {type(model).__name__}: {e}"
        ) from None
    _restore_granularities(model, header.get("report"))
    return model


def _restore_granularities(model: nn.Module, report: Any) -> None:
    """Re-attach each pruned layer's granularity from the saved report (for N:M checks)."""
    if report is None:
        return
    rows = report.get("layers") if isinstance(report, dict) else None
    if not isinstance(rows, list):
        raise CheckpointError("prunekit.json: report.layers must be a list")
    modules = dict(model.named_modules())
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
        try:
            parse_granularity(spec)
        except PrunekitError as e:
            raise CheckpointError(f"prunekit.json: report row {name!r}: {e}") from None
        record_granularity(module, param, spec)
