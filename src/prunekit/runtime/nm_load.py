"""``pk.load(directory, sparse=True)``: N:M checkpoint weights straight onto ``prunekit_nm``.

The checkpoint format ``nm`` stores each group's kept values in the slot order of the N:M kernel,
so a weight stored as ``nm`` becomes the kernel's packed tensors without a dense weight in between
(:func:`~prunekit.runtime.kernels.nm.packed_from_nm_format`). The loader asks
:func:`direct_nm_weights` which entries qualify, packs them with :func:`packed_nm_weight` instead
of decoding them, and swaps their layers with :func:`install_packed`; every other tensor loads as
it always does. The swapped layers are :class:`~prunekit.runtime.module.SparseLinear` modules
(inference only), with outputs identical to ``pk.sparsify(..., kernels=["prunekit_nm"])`` on
the densely loaded model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, PrunekitError
from .kernels import get_kernel
from .kernels.nm import PATTERNS, packed_from_nm_format
from .module import SparseLinear, _carry_granularity

KERNEL = "prunekit_nm"


def direct_nm_weights(model: nn.Module, entries: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The checkpoint entries that can load straight onto the N:M kernel: the fp32 weight of an
    ``nn.Linear``, stored as ``nm`` in its own ``[out, in]`` layout with an N:M the kernel runs,
    and not shared with another tensor (a tied weight must stay dense). Empty where the compiled
    kernel is not available."""
    if not get_kernel(KERNEL).available():
        return set()
    shared = {e["alias"] for e in entries.values() if "alias" in e}
    modules = dict(model.named_modules())
    out = set()
    for name, e in entries.items():
        mod_name, _, param = name.rpartition(".")
        meta = e.get("meta") or {}
        if (
            mod_name  # a layer inside the model, which can be swapped
            and param == "weight"
            and e.get("format") == "nm"
            and e.get("dtype") == "float32"
            and "alias" not in e
            and name not in shared
            and not e.get("perm")
            and type(modules.get(mod_name)) is nn.Linear  # not a subclass with its own forward
            and (meta.get("n"), meta.get("m")) in PATTERNS
        ):
            out.add(name)
    return out


def packed_nm_weight(
    name: str, entry: Mapping[str, Any], parts: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The N:M kernel's packed tensors of checkpoint entry ``name`` from its stored ``parts``,
    checked as the dense decode checks them (parts, non-zero count, finiteness)."""
    shape = tuple(entry["shape"])
    try:
        packed = packed_from_nm_format(parts, entry["meta"], shape)
    except PrunekitError as err:
        raise CheckpointError(f"{name}: {err}") from None
    except (ValueError, IndexError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{name}: corrupt nm data: {err}") from None
    values = packed["values"]
    if entry.get("finite") is True and not bool(torch.isfinite(values).all()):
        raise CheckpointError(f"{name}: decodes to NaN or inf, but was saved finite")
    nnz = int(torch.count_nonzero(values))
    if nnz != entry["nnz"]:
        raise CheckpointError(f"{name}: decodes to {nnz} non-zeros, header says {entry['nnz']}")
    return packed


def install_packed(model: nn.Module, packed: Mapping[str, dict[str, torch.Tensor]]) -> None:
    """Swap the ``nn.Linear`` owning each weight name for a SparseLinear on the N:M kernel (its
    bias and recorded granularity carried over)."""
    for name, tensors in packed.items():
        mod_name, _, _ = name.rpartition(".")
        dense = model.get_submodule(mod_name)
        shape = (dense.out_features, dense.in_features)
        sparse = SparseLinear(tensors, dense.bias, shape, KERNEL, type(dense).__name__)
        _carry_granularity(dense, sparse)
        parent_name, _, child = mod_name.rpartition(".")
        model.get_submodule(parent_name)._modules[child] = sparse
