"""Resolve a model spec from the command line: a Hugging Face directory, a prunekit checkpoint
directory, or ``package.module:factory`` (optionally with ``--weights FILE.safetensors``)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError, PrunekitError

if TYPE_CHECKING:
    from torch import nn

SPEC_HELP = "a Hugging Face model directory, a prunekit output directory, or package.module:factory"


def load_hf_directory(path: Path) -> nn.Module:
    """Build the class named in ``config.json``'s ``architectures`` and load its weights offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise PrunekitError(
            "loading a Hugging Face directory needs transformers: pip install 'prunekit[hf]'"
        ) from None
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:  # unreadable JSON, unknown model_type, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunekitError(f"{path}/config.json cannot be read by transformers: {first}") from None
    arch = (getattr(config, "architectures", None) or ["AutoModel"])[0]
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise PrunekitError(
            f"{path}/config.json names architecture {arch!r}, unknown to transformers"
        )
    try:
        return cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:  # missing or unreadable weights
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunekitError(f"cannot load {arch} from {path}: {first}") from None


def load_factory(spec: str) -> nn.Module:
    """Call ``package.module:factory`` and check that it returns an ``nn.Module``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PrunekitError(f"model spec {spec!r} is not {SPEC_HELP}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise PrunekitError(f"cannot import {spec!r}: {e}") from None
    from torch import nn

    model = factory()
    if not isinstance(model, nn.Module):
        raise PrunekitError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a safetensors state dict into ``model`` strictly (names and shapes must match)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read weights {weights}: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)]
        raise CheckpointError(
            f"weights {weights} do not fit the model: {first[0].strip()}"
        ) from None


def load_checkpoint_directory(path: Path) -> nn.Module:
    """A prunekit checkpoint: rebuilt from the factory ``prunekit prune`` recorded as its
    ``source``, or, for a Hugging Face checkpoint, from its config."""
    from .formats.checkpoint import load
    from .formats.header import read_header

    source = read_header(path).get("source")
    if source is None:
        return load(path)
    if not isinstance(source, str):
        raise CheckpointError(f"{path}/prunekit.json: source must be a factory spec string")
    return load(path, model=load_factory(source))


def load_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """The model named by ``spec`` (see :data:`SPEC_HELP`)."""
    path = Path(spec)
    if path.is_dir():
        if weights is not None:
            raise PrunekitError("--weights applies to package.module:factory specs only")
        if (path / "prunekit.json").is_file():
            return load_checkpoint_directory(path)
        if (path / "config.json").is_file():
            return load_hf_directory(path)
        raise PrunekitError(f"directory {path} holds neither prunekit.json nor config.json")
    if ":" not in spec:
        raise PrunekitError(f"model spec {spec!r} is not {SPEC_HELP} (no such directory)")
    model = load_factory(spec)
    if weights is not None:
        load_weights(model, weights)
    return model
