"""Weight normalisation: ``torch._weight_norm(v, g, dim)``, the weight that
``nn.utils.parametrizations.weight_norm`` (and the older ``nn.utils.weight_norm``) computes for
the layer that reads it (wav2vec2's positional convolution)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..graph import Call
from ..propagate import Example, Rule, State, arg, register
from ._examples import IMAGE, VEC, Fn, randn
from .linear import is_weight

#: why the slices along the normed dimension stay
ZERO_NORM = "weight norm: a masked slice along its dimension would divide zero by zero"


class WeightNorm(Rule):
    """``w = g * v / ||v||``, the norm taken over every dimension of ``v`` but ``dim`` (over all
    of it for ``dim=-1``). The layer reading ``w`` binds ``v``'s dimensions index for index
    (:attr:`State.derived`). A masked slice of ``v`` is zero, so each norm over the masked ``v``
    equals the norm over its kept slices: the masked layer computes what the shrunk one does
    (and masking ``v`` scales ``g`` so that the kept weights are the dense ones: see
    :mod:`prunekit.masks`). Slices along ``dim`` itself stay (``g``'s entries): masking one would
    make its norm zero and the weight ``0 / 0``."""

    ops = ("_weight_norm",)
    examples = (
        # norm per kernel tap (wav2vec2's positional conv): input and output channels go
        Example(
            lambda: nn.Sequential(
                nn.Conv1d(3, 16, 3),
                nn.ReLU(),
                weight_norm(nn.Conv1d(16, 16, 3, groups=4), dim=2),
                nn.ReLU(),
                nn.Conv1d(16, 4, 1),
            ),
            randn(2, 3, 12),
        ),
        # norm per output row (the default): the input channels go, the outputs stay
        Example(
            lambda: nn.Sequential(nn.Linear(8, 16), Fn(torch.relu), weight_norm(nn.Linear(16, 4))),
            VEC,
        ),
        Example(
            lambda: nn.Sequential(
                nn.Conv2d(3, 16, 3), nn.ReLU(), weight_norm(nn.Conv2d(16, 4, 1), dim=None)
            ),
            IMAGE,
        ),
    )

    def apply(self, call: Call, st: State) -> None:
        v, g, dim = call.args[0], arg(call, 1, "g"), arg(call, 2, "dim", 0)
        if not (is_weight(st, v) and st.owned(g)) or not isinstance(dim, int):
            st.refuse(call, "weight norm of tensors that are not module parameters")
            return
        fixed = None if dim == -1 else (dim % v.dim(), call, ZERO_NORM)
        st.derived[id(call.out)] = (v, fixed)


register("weight-norm", WeightNorm())
