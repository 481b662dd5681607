"""Whether a Hugging Face model's config rebuilds it: the same parameter and buffer shapes and
norm epsilons, checked on the ``meta`` device. A saved folder whose config.json does not describe
its weights is refused by plain ``transformers`` (or, for an epsilon alone, loaded wrongly)."""

from __future__ import annotations

import torch
from torch import nn

#: norm attributes holding epsilon
EPS_ATTRS = ("variance_epsilon", "eps")


def meta_build(model: nn.Module, config: object) -> nn.Module | None:
    """``model``'s class built from ``config`` on the meta device (no memory, no init), or None
    where the class has no ``_from_config`` or the config does not build (describes nothing)."""
    build = getattr(type(model), "_from_config", None)
    if build is None:
        return None
    try:
        with torch.device("meta"):
            return build(config)
    except Exception:
        return None


def validates(config: object) -> bool:
    """The config passes its class's validators, as ``from_pretrained`` runs them (Llama: the
    hidden size a multiple of the head count; XLNet: ``d_head * n_head == d_model``)."""
    try:
        type(config).from_dict(config.to_dict())
    except Exception:
        return False
    return True


def describes(model: nn.Module) -> bool:
    """The model's config rebuilds exactly its parameter and buffer shapes (checked on the
    ``meta`` device); False for models without a Hugging Face config."""
    return described(model) is True


def misdescribes(model: nn.Module) -> bool:
    """The model's class builds from its config, but not with the model's shapes and epsilons:
    plain transformers would refuse the model's folder or load it wrongly."""
    return described(model) is False


def described(model: nn.Module) -> bool | None:
    """Whether the model's config rebuilds it; None where that cannot be checked (no config, or
    a class that does not build from it on the meta device)."""
    config = getattr(model, "config", None)
    fresh = None if config is None else meta_build(model, config)
    if fresh is None:
        return None
    if not validates(config):  # from_pretrained refuses it
        return False
    shapes = {k: v.shape for k, v in fresh.state_dict().items()}
    if any(shapes.get(k) != v.shape for k, v in model.state_dict().items()):
        return False
    return same_eps(model, dict(fresh.named_modules()))


def same_eps(model: nn.Module, built: dict[str, nn.Module]) -> bool:
    """Every norm of ``model`` has its epsilon in the rebuilt modules ``built`` (by name)."""
    return all(
        getattr(built.get(n), a, None) == getattr(m, a)
        for n, m in model.named_modules()
        for a in EPS_ATTRS
        if is_float(m, a)
    )


def is_float(module: nn.Module, attr: str) -> bool:
    return isinstance(module.__dict__.get(attr), float)
