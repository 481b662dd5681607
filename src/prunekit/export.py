"""ONNX export of a finalized or physically shrunk model, checked against onnxruntime.

ONNX has no sparse weight storage that runtimes execute, so every weight is exported dense: a
finalized model's zeros are stored as zeros (the file is as large as the dense model's), while a
physically shrunk model exports smaller, because its tensors are. Sparse-kernel modules
(``pk.sparsify``) are exported as the dense layers they replace. Needs ``pip install
'prunekit[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, PrunekitError, VerificationError


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    """The output tensors in ONNX output order (a ModelOutput's fields in order, no Nones)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flat_tensors(item)]
    return []


def _as_args(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    raise ConfigError(
        f"example_inputs must be a tensor, a tuple or a dict, not {type(example_inputs).__name__}"
    )


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    opset: int = 18,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> Path:
    """Export ``model`` (eval mode) to the ONNX file ``path`` and check it with onnxruntime.

    ``example_inputs`` is a tensor, a tuple of positional inputs or a dict of keyword inputs;
    the graph is traced on them (fixed shapes). The onnxruntime outputs must match the model's
    within ``rtol``/``atol``, else :class:`~prunekit.errors.VerificationError`; the file is
    written atomically.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise PrunekitError("ONNX export needs: pip install 'prunekit[onnx]'") from None
    from .runtime import SparseLinear, unsparsify

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = _as_args(example_inputs)
    model = copy.deepcopy(model).eval()
    if any(isinstance(m, SparseLinear) for m in model.modules()) or isinstance(model, SparseLinear):
        warnings.warn(
            "sparse-kernel modules are exported as dense layers: ONNX runtimes run no prunekit "
            "kernels",
            stacklevel=2,
        )
        model = unsparsify(model)
    with torch.no_grad():
        expected = _flat_tensors(model(*args, **kwargs))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".pk-{os.getpid()}.{path.name}.tmp")
    try:
        quiet = logging.getLogger("torch.onnx")  # its notes on optional torchvision ops
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            redirect_stdout(io.StringIO()),
            redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, args, str(tmp), kwargs=kwargs or None, opset_version=opset,
                dynamo=True, external_data=False,
            )  # fmt: skip
        quiet.setLevel(level)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        values = [*args, *kwargs.values()]
        by_name = dict(zip(list(kwargs) if kwargs else names, values, strict=False))
        feed = {n: by_name.get(n, v).numpy() for n, v in zip(names, values, strict=False)}
        got = session.run(None, feed)
        if len(got) < len(expected):
            raise VerificationError(
                f"the ONNX graph has {len(got)} outputs, the model {len(expected)}"
            )
        for i, (e, g) in enumerate(zip(expected, got, strict=False)):
            g = torch.from_numpy(g)
            if g.shape != e.shape or not torch.allclose(g.to(e.dtype), e, rtol=rtol, atol=atol):
                err = (g.to(e.dtype) - e).abs().max().item() if g.shape == e.shape else "shape"
                raise VerificationError(
                    f"onnxruntime output {i} differs from the model's (max abs error {err})"
                )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
