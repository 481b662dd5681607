"""``prunekit.json``: the checkpoint header's schema, its checksum, and its validation.

The header is written by :func:`~prunekit.formats.checkpoint.save`. Read back, it is untrusted:
:func:`read_header` checks its checksum and every field's type and range before the loader uses
it. Tensor data is checked later, against the model and by each format's decoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .base import DTYPES, FORMATS, entropy_limit_bits

#: the weights of a checkpoint whose tensors are all stored plainly (what transformers reads)
MODEL_FILE = "model.safetensors"
#: the weights of a checkpoint with compressed tensors: a name transformers does not read, so
#: that ``from_pretrained`` on the directory raises instead of initialising those tensors at random
COMPRESSED_FILE = "prunekit.safetensors"
WEIGHT_FILES = (MODEL_FILE, COMPRESSED_FILE)
HEADER_FILE = "prunekit.json"
HF_CONFIG_FILE = "config.json"
SCHEMA = 1
#: the largest prunekit.json written or read (about 25k tensors: a header takes about 630 bytes per
#: tensor); parsed JSON takes up to about 25 times its size in memory, so the size is checked
#: before anything is parsed
MAX_HEADER_BYTES = 16 * 2**20
#: the largest config.json read
MAX_CONFIG_BYTES = 4 * 2**20
#: how a tensor entry records its mask: the non-zeros of the stored tensor, or a packed bitmask
#: part ``<name>::keep_mask`` where the two differ (a kept weight that is exactly zero)
MASK_KINDS = ("nonzero", "bitmask")
_ENTRY_KEYS = {
    "format", "dtype", "shape", "meta", "perm", "alias", "nnz", "bytes", "finite", "mask",
}  # fmt: skip


def checksum(header: dict[str, Any]) -> str | None:
    """SHA-256 of the header's canonical JSON without its ``checksum`` field."""
    body = {k: v for k, v in header.items() if k != "checksum"}
    try:
        return hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
    except (ValueError, RecursionError):  # not canonically serialisable: cannot match
        return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**22), b""):
            h.update(chunk)
    return h.hexdigest()


def storage_rows(header: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stored tensor (tied copies once): format, bits per weight and the entropy limit."""
    rows = []
    for name, e in header["tensors"].items():
        if "alias" in e:
            continue
        numel = math.prod(e["shape"])
        vbits = 8 * torch.empty((), dtype=DTYPES[e["dtype"]]).element_size()
        limit = entropy_limit_bits(numel, e["nnz"], vbits)
        rows.append({
            "name": name, "format": e["format"], "shape": e["shape"], "dtype": e["dtype"],
            "numel": numel, "nnz": e["nnz"], "bytes": e["bytes"], "dense_bytes": numel * vbits // 8,
            "bits_per_weight": 8 * e["bytes"] / max(numel, 1),
            "limit_bits_per_weight": limit / max(numel, 1),
        })  # fmt: skip
    return rows


def storage_summary(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sizes of the whole checkpoint, in bits per original weight next to the entropy limit."""
    rows = storage_rows({"tensors": entries})
    numel, nbytes = sum(r["numel"] for r in rows), sum(r["bytes"] for r in rows)
    limit = sum(r["limit_bits_per_weight"] * r["numel"] for r in rows)
    formats: dict[str, int] = {}
    for r in rows:
        formats[r["format"]] = formats.get(r["format"], 0) + 1
    return {
        "bytes": nbytes, "dense_bytes": sum(r["dense_bytes"] for r in rows), "numel": numel,
        "bits_per_weight": 8 * nbytes / numel if numel else 0.0,
        "limit_bits_per_weight": limit / numel if numel else 0.0, "formats": formats,
    }  # fmt: skip


def _bad(msg: str) -> CheckpointError:
    return CheckpointError(f"corrupt checkpoint header: {msg}")


def read_json(path: Path, limit: int) -> Any:
    """The JSON in ``path``, refused unread when it is larger than ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # never more than the limit, even if the file grows
    except OSError:
        raise CheckpointError(f"{path} is missing or unreadable") from None
    if len(data) > limit:
        raise CheckpointError(f"{path} is larger than {limit} bytes, the most prunekit reads")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, absurdly long numbers
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _check_entry(name: str, e: Any, entries: dict[str, Any]) -> None:
    if not isinstance(e, dict) or not {"format", "dtype", "shape", "meta", "nnz"} <= set(e):
        raise _bad(f"tensor {name!r} has a malformed entry")
    if set(e) - _ENTRY_KEYS:
        raise _bad(f"tensor {name!r} has unknown fields {sorted(set(e) - _ENTRY_KEYS)}")
    fmt, dtype = e["format"], e["dtype"]
    if not (isinstance(fmt, str) and fmt in FORMATS and isinstance(dtype, str) and dtype in DTYPES):
        raise _bad(f"tensor {name!r} has an unknown format or dtype")
    if not isinstance(e["meta"], dict):
        raise _bad(f"tensor {name!r} has malformed meta")
    shape = e["shape"]
    if not isinstance(shape, list) or len(shape) > 32 or not all(_is_int(d) for d in shape):
        raise _bad(f"tensor {name!r} has a malformed shape {shape!r}")
    if not _is_int(e["nnz"]) or e["nnz"] > math.prod(shape) or not _is_int(e.get("bytes", 0)):
        raise _bad(f"tensor {name!r} has a malformed non-zero count or size")
    if e.get("mask", "nonzero") not in MASK_KINDS:
        raise _bad(f"tensor {name!r} records its mask as {e['mask']!r}, not one of {MASK_KINDS}")
    perm = e.get("perm")
    if perm is not None and (
        e["format"] == "dense"
        or not isinstance(perm, list)
        or not all(_is_int(i) for i in perm)
        or sorted(perm) != list(range(len(shape)))
    ):
        raise _bad(f"tensor {name!r} has a malformed layout {perm!r}")
    alias = e.get("alias")
    if alias is not None:
        target = entries.get(alias) if isinstance(alias, str) else None
        if (
            not isinstance(target, dict)
            or "alias" in target
            or any(target.get(k) != e[k] for k in ("format", "dtype", "shape"))
        ):
            raise _bad(f"tensor {name!r} aliases {alias!r}, which is not a matching stored tensor")


def _check_header(header: Any) -> None:
    if not isinstance(header, dict):
        raise _bad("it is not a JSON object")
    info = header.get("prunekit")
    if not isinstance(info, dict) or info.get("schema") != SCHEMA:
        raise _bad(f"unsupported schema {info!r} (this prunekit reads schema {SCHEMA})")
    entries = header.get("tensors")
    if not isinstance(entries, dict):
        raise _bad("'tensors' is not a mapping")
    for name, e in entries.items():
        _check_entry(name, e, entries)
    files = header.get("files")
    if not isinstance(files, dict) or len(set(files) & set(WEIGHT_FILES)) != 1:
        raise _bad(f"'files' does not list exactly one of {WEIGHT_FILES}")
    for name, f in files.items():
        if name not in (*WEIGHT_FILES, HF_CONFIG_FILE) or not isinstance(f, dict):
            raise _bad(f"unexpected file entry {name!r}")
        sha, size, pending = f.get("sha256"), f.get("bytes"), f.get("pending")
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) and _is_int(size)):
            raise _bad(f"file entry {name!r} is malformed")
        if not isinstance(pending, str) or not re.fullmatch(
            rf"\.pk-[0-9a-f]{{12}}\.{re.escape(name)}\.tmp", pending
        ):
            raise _bad(f"file entry {name!r} names a malformed temporary {pending!r}")
    if not isinstance(header.get("manifest"), dict):
        raise _bad("'manifest' is not a mapping")


def weights_file(header: dict[str, Any]) -> str:
    """The name of the weights file a validated header lists."""
    return next(name for name in WEIGHT_FILES if name in header["files"])


def read_header(directory: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """The validated ``prunekit.json`` of a checkpoint (its checksum checked if ``verify``)."""
    directory = Path(directory)
    if not (directory / HEADER_FILE).is_file():
        raise CheckpointError(
            f"{directory} holds no prunekit checkpoint ({HEADER_FILE} is missing)"
        )
    header = read_json(directory / HEADER_FILE, MAX_HEADER_BYTES)
    if verify and (not isinstance(header, dict) or header.get("checksum") != checksum(header)):
        raise _bad(f"checksum mismatch: {HEADER_FILE} is corrupt or was edited")
    _check_header(header)
    return header
