"""Resolve a model spec from the command line: a Hugging Face directory, a prunekit checkpoint
directory, or ``package.module:factory`` (optionally with ``--weights FILE.safetensors``).

No file can make prunekit run code. A directory's model class is rebuilt only from an allow-list:
a class ``transformers`` itself defines (named in ``config.json``'s ``architectures``; never remote
code), or a factory that ships with prunekit (:data:`TRUSTED_SOURCES`). A checkpoint whose
``prunekit.json`` names any other factory as its ``source`` is refused unless the user passes
``trust_source=True`` (``--trust-source``, the ``trust_remote_code`` convention). A factory typed
on the command line is the user's own choice and is imported as given.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError, PrunekitError

if TYPE_CHECKING:
    from torch import nn

SPEC_HELP = "a Hugging Face model directory, a prunekit output directory, or package.module:factory"
TRUST_SOURCE_HELP = (
    "import and run the package.module:factory that a checkpoint's prunekit.json names as its "
    "source (only for checkpoints you trust: it runs their code)"
)
#: factories a checkpoint may name as its ``source`` without ``--trust-source``: prunekit's own
TRUSTED_SOURCES = frozenset({"prunekit.demo:digits_cnn"})


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
    except (OSError, ValueError, KeyError, TypeError) as e:  # a broken or remote-code config
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {path}/config.json: {first}") from None
    arch = (getattr(config, "architectures", None) or ["AutoModel"])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    known = isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
    if not (known or cls is transformers.AutoModel):
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


def load_checkpoint_directory(path: Path, trust_source: bool = False) -> nn.Module:
    """A prunekit checkpoint: a Hugging Face one rebuilt from its config, another from the
    factory ``prunekit prune`` recorded as its ``source`` (see the module docstring: only
    :data:`TRUSTED_SOURCES`, or any with ``trust_source``)."""
    from .formats.checkpoint import load
    from .formats.header import read_header

    source = read_header(path).get("source")
    if source is None:
        return load(path)
    if not isinstance(source, str):
        raise CheckpointError(f"{path}/prunekit.json: source must be a factory spec string")
    if source not in TRUSTED_SOURCES and not trust_source:
        raise CheckpointError(
            f"{path}/prunekit.json names the code {source!r} to build its model; prunekit does "
            "not run code named by a file. If you trust this checkpoint, pass --trust-source"
        )
    return load(path, model=load_factory(source))


def load_model(
    spec: str, weights: str | Path | None = None, *, trust_source: bool = False
) -> nn.Module:
    """The model named by ``spec`` (see :data:`SPEC_HELP`); ``trust_source`` lets a checkpoint
    directory name the factory that builds it."""
    path = Path(spec)
    if path.is_dir():
        if weights is not None:
            raise PrunekitError("--weights applies to package.module:factory specs only")
        if (path / "prunekit.json").is_file():
            return load_checkpoint_directory(path, trust_source)
        if (path / "config.json").is_file():
            return load_hf_directory(path)
        raise PrunekitError(f"directory {path} holds neither prunekit.json nor config.json")
    if ":" not in spec:
        raise PrunekitError(f"model spec {spec!r} is not {SPEC_HELP} (no such directory)")
    model = load_factory(spec)
    if weights is not None:
        load_weights(model, weights)
    return model
