"""A Pruner's state in a file next to a training checkpoint: safetensors (masks) + JSON metadata
(step, config). No pickle; written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import CheckpointError
from ..pruner import Pruner

PRUNER_FILE = "prunekit_pruner.safetensors"


def save_pruner(pruner: Pruner, path: str | os.PathLike) -> Path:
    """Write ``pruner.state_dict()`` to ``path``: masks as bool tensors, step and config as JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    state = pruner.state_dict()
    meta = {"step": json.dumps(state["step"]), "config": json.dumps(state["config"])}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state["masks"].items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_pruner(pruner: Pruner, path: str | os.PathLike) -> None:
    """Restore a state written by :func:`save_pruner` into ``pruner`` (masks ANDed in, step set)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            masks = {k: f.get_tensor(k).bool() for k in f.keys()}  # noqa: SIM118 (safe_open API)
        step = json.loads(meta["step"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read pruner state {path}: {e}") from None
    pruner.load_state_dict({"step": step, "masks": masks})
