"""In-place writes: ``dst.copy_(src)`` and ``dst[idx] = value``."""

from __future__ import annotations

import torch

from ..graph import Call
from ..propagate import Example, Rule, State, register
from ._examples import VEC, mlp_around


def _copy_into(h: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(h)
    out.copy_(h)
    return out


def _set_half(h: torch.Tensor) -> torch.Tensor:
    out = h.clone()
    out[out < 0] = 0.0
    return out


class Like(Rule):
    """``zeros_like(x)`` and kin: shaped like ``x``, one value per element (no mixing), so its
    slice in channel ``c`` is removed with ``c``."""

    ops = ("empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like")
    examples = (Example(lambda: mlp_around(lambda h: h + torch.ones_like(h)), VEC),)

    def apply(self, call: Call, st: State) -> None:
        st.set(call.out, st.small(call.args[0]))


class Copy(Rule):
    """``dst`` takes the channels of ``src``."""

    ops = ("copy_",)
    examples = (Example(lambda: mlp_around(_copy_into), VEC),)

    def apply(self, call: Call, st: State) -> None:
        dst, src = call.args[0], call.args[1]
        a = st.atoms(src)
        st.set(dst, torch.broadcast_to(a, dst.shape) if a is not None else None)


class SetItem(Rule):
    """Replay the indexed assignment on the channel ids: a tensor value writes its ids (``-1``
    if untracked); a Python number written into channel ``c`` stays in channel ``c``."""

    ops = ("__setitem__",)
    examples = (Example(lambda: mlp_around(_set_half), VEC),)

    def apply(self, call: Call, st: State) -> None:
        dst, idx, val = call.args
        a = st.atoms(dst)
        v = st.atoms(val) if isinstance(val, torch.Tensor) else None
        base = a.clone() if a is not None else torch.full(dst.shape, -1, dtype=torch.long)
        if not isinstance(val, torch.Tensor):
            st.set(dst, base)
            return
        try:
            base[idx] = v if v is not None else -1
        except (RuntimeError, IndexError):
            st.refuse(call, "unsupported indexed assignment")
            st.set(dst, None)
            return
        st.set(dst, base)


register("like", Like())
register("copy", Copy())
register("setitem", SetItem())
