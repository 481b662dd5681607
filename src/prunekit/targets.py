"""Which tensors are prunable, and how each is seen as an ``[out, in]`` matrix.

Every granularity works on one canonical 2-D view of a weight, with the *input* dimension last, so
that N:M groups and blocks run along the input dimension for every layer type:

* ``nn.Linear``: ``[out, in]`` as stored;
* ``nn.ConvNd``: ``[out, in/groups, *k]`` is permuted to ``[out, *k, in/groups]`` and flattened to
  ``[out, prod(k) * in/groups]`` (input channels fastest, the NVIDIA ASP convention);
* Hugging Face ``Conv1D`` (GPT-2): ``[in, out]`` is transposed to ``[out, in]``;
* ``nn.Embedding`` ``[vocab, dim]`` as stored: one row per token, N:M groups and blocks run along
  the embedding dimension. Embedding tables are targets only when an ``include`` entry names
  them (by name, regex or type): most recipes keep them dense.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import TargetError

Selector = str | type
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face's ``Conv1D`` (a linear layer that stores its weight as [in, out])."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_prunable(module: nn.Module) -> bool:
    """A layer (Linear, Conv, Conv1D): a default target and a structure-coupled weight."""
    return isinstance(module, (nn.Linear, *_CONV)) or is_hf_conv1d(module)


def is_embedding(module: nn.Module) -> bool:
    """An embedding table: a target only when an ``include`` entry selects it."""
    return isinstance(module, nn.Embedding)


def is_target_type(module: nn.Module) -> bool:
    """Any module whose weight can be a target (a layer, or an included embedding)."""
    return is_prunable(module) or is_embedding(module)


SUPPORTED = "nn.Linear, nn.Conv1d/2d/3d, transformers Conv1D, nn.Embedding (when included)"


@dataclass(frozen=True, eq=False)
class Target:
    """One prunable parameter: ``module.<param>`` where ``module`` is at ``name`` in the model."""

    name: str
    module: nn.Module
    param: str = "weight"

    @property
    def qualname(self) -> str:
        return f"{self.name}.{self.param}" if self.name else self.param

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.param)

    @property
    def embedding(self) -> bool:
        """True for an embedding table (its input is token ids, not activations)."""
        return is_embedding(self.module)

    def to_matrix(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like the weight, viewed as ``[out, in]`` (input dimension last)."""
        if is_hf_conv1d(self.module):
            return t.t()  # [in, out] -> [out, in]
        if t.dim() > 2:  # conv: [out, in/g, *k] -> [out, *k, in/g] -> [out, prod(k)*in/g]
            return t.movedim(1, -1).reshape(t.shape[0], -1)
        return t

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_matrix`: a ``[out, in]`` matrix back in the weight's layout."""
        shape = self.weight.shape
        if is_hf_conv1d(self.module):
            return m.t().contiguous()
        if len(shape) > 2:
            return m.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1).contiguous()
        return m

    def matrix(self) -> torch.Tensor:
        """The weight as a detached ``[out, in]`` matrix."""
        return self.to_matrix(self.weight.detach())


def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
    if isinstance(selector, type):
        return isinstance(module, selector)
    return name == selector or re.fullmatch(selector, name) is not None


def check_selectors(kind: str, selectors: Selector | Sequence[Selector] | None) -> None:
    """Raise :class:`TargetError` unless every entry is a valid regex or an nn.Module type."""
    if selectors is not None and not isinstance(selectors, (str, type, list, tuple)):
        raise TargetError(
            f"{kind} must be a name, a regex, a module type or a list of them, got {selectors!r}"
        )
    for s in _as_list(selectors):
        if isinstance(s, type):
            if not issubclass(s, nn.Module):
                raise TargetError(f"{kind} type {s.__name__} is not an nn.Module subclass")
        elif isinstance(s, str):
            try:
                re.compile(s)
            except re.error as e:
                raise TargetError(f"{kind} pattern {s!r} is not a valid regex: {e}") from None
        else:
            raise TargetError(f"{kind} entries must be names, regexes or module types, got {s!r}")


def _as_list(selectors: Selector | Sequence[Selector] | None) -> list[Selector]:
    if selectors is None:
        return []
    if isinstance(selectors, (str, type)):
        return [selectors]
    return list(selectors)


def matching(model: nn.Module, selectors: Selector | Sequence[Selector] | None) -> set[int]:
    """``id()`` of every module of ``model`` that one of ``selectors`` matches."""
    chosen = _as_list(selectors)
    return {id(m) for n, m in model.named_modules() if any(_matches(s, n, m) for s in chosen)}


def selected(
    model: nn.Module,
    candidates: set[int],
    include: Selector | Sequence[Selector] | None = None,
    exclude: Selector | Sequence[Selector] | None = None,
) -> set[int]:
    """The ``candidates`` (module ``id()``s) that a job's ``include``/``exclude`` select."""
    if include:
        candidates = candidates & matching(model, include)
    return candidates - matching(model, exclude)


def output_head(model: nn.Module) -> nn.Module | None:
    """A Hugging Face model's output embeddings (``lm_head``), if it has them."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, nn.Module) else None


def default_excluded(model: nn.Module) -> set[int]:
    """Modules excluded unless named: a Hugging Face model's output embeddings (``lm_head``)."""
    head = output_head(model)
    return set() if head is None else {id(head)}


def select_targets(
    model: nn.Module,
    include: Selector | Sequence[Selector] | None = None,
    exclude: Selector | Sequence[Selector] | None = None,
) -> list[Target]:
    """The prunable weights of ``model``.

    ``include`` and ``exclude`` take module names, regexes (full match on the module's qualified
    name) or module types. By default every Linear and Conv weight is a target, except a Hugging
    Face model's output embeddings; embedding tables (``nn.Embedding``) are targets only when an
    include entry selects them. An include entry that selects nothing, or that names an
    unsupported layer by name or type, raises :class:`TargetError`.
    """
    if not isinstance(model, nn.Module):
        raise TargetError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inc, exc = _as_list(include), _as_list(exclude)
    check_selectors("include", inc)
    check_selectors("exclude", exc)
    skip = default_excluded(model)
    named = list(model.named_modules())
    for s in inc:
        hits = [(n, m) for n, m in named if _matches(s, n, m)]
        if not hits:
            raise TargetError(f"include entry {s!r} matches no module of {type(model).__name__}")
        explicit = isinstance(s, type) or any(n == s for n, _ in hits)
        bad = [f"{n} ({type(m).__name__})" for n, m in hits if not is_target_type(m)]
        if explicit and bad:
            raise TargetError(f"unsupported layer {bad[0]}; prunable layer types: {SUPPORTED}")
    targets = []
    for name, module in named:
        if not is_target_type(module) or (is_embedding(module) and not inc):
            continue
        if inc:
            if not any(_matches(s, name, module) for s in inc):
                continue
        elif id(module) in skip:
            continue
        if any(_matches(s, name, module) for s in exc):
            continue
        targets.append(Target(name, module))
    if not targets:
        layers = [n for n, m in named if is_prunable(m)]
        sample = ", ".join(layers[:8]) or "none"
        raise TargetError(
            f"the target selection is empty (include={inc or 'default'}, exclude={exc}); "
            f"prunable layers in this model: {sample}"
        )
    return targets
