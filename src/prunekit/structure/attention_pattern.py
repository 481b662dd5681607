"""Eager attention in a trace: ``matmul -> (scale, mask, bias) -> softmax -> (dropout) -> matmul``.

:func:`with_eager_attention` rewrites each such chain of a recorded forward as the
``scaled_dot_product_attention`` call it computes (``q``, ``k``, ``v``, and a per-head bias added
to the scores as ``attn_mask``), so that :mod:`.attention` reads the heads of hand-written
attention exactly as it reads those of ``F.scaled_dot_product_attention``. The scores product
itself stays in the trace (a product of activations); only the weighted sum of values becomes
the attention call, whose output then gets per-head channel ids.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from .graph import Call, Graph

#: products of two activations that compute scores or weight the values
_PRODUCTS = ("matmul", "__matmul__")
#: ops allowed between the scores product and the softmax, and after the softmax
_SCORES = {
    "add", "__add__", "__iadd__", "__radd__", "sub", "__sub__", "mul", "__mul__", "__rmul__",
    "__imul__", "div", "__truediv__", "__itruediv__", "true_divide", "masked_fill", "where",
    "to", "float", "half", "bfloat16", "double", "type_as", "contiguous", "clone", "dropout",
}  # fmt: skip
_ADDS = {"add", "__add__", "__iadd__", "__radd__", "sub", "__sub__"}


def _is_product(call: Call) -> bool:
    ins = [a for a in call.args[:2] if isinstance(a, torch.Tensor)]
    return (
        call.name in _PRODUCTS
        and len(ins) == 2
        and all(t.dim() == 4 and not isinstance(t, torch.nn.Parameter) for t in ins)
    )


def _scores_of(
    probs: torch.Tensor, made_by: dict[int, Call]
) -> tuple[Call, list[torch.Tensor]] | None:
    """The scores product behind attention weights ``probs`` (through exactly one softmax), and
    the 4-D tensors added to the scores before the softmax."""
    t, softmax, added = probs, False, []
    for _ in range(32):
        call = made_by.get(id(t))
        if call is None:
            return None
        if _is_product(call):
            return (call, added) if softmax else None
        if call.name == "softmax":
            if softmax:
                return None
            softmax = True
        elif call.name not in _SCORES:
            return None
        ins = [a for a in (*call.args, *call.kwargs.values()) if isinstance(a, torch.Tensor)]
        main = [a for a in ins if _leads_to_product(a, made_by, 32)]
        if len(main) != 1:
            return None
        if softmax and call.name in _ADDS:  # (walking back: added before the softmax)
            added += [a for a in ins if a is not main[0] and a.dim() == 4]
        t = main[0]
    return None


def _leads_to_product(t: torch.Tensor, made_by: dict[int, Call], depth: int) -> bool:
    """``t`` is a product of activations, or made from one by score ops."""
    call = made_by.get(id(t))
    if call is None or depth == 0:
        return False
    if _is_product(call):
        return True
    if call.name not in _SCORES | {"softmax"}:
        return False
    ins = [a for a in (*call.args, *call.kwargs.values()) if isinstance(a, torch.Tensor)]
    return any(_leads_to_product(a, made_by, depth - 1) for a in ins)


def eager_attention(graph: Graph) -> dict[int, tuple[Call, Call, Call]]:
    """id(weighted-sum call) -> (transpose of the keys, the attention call, the scores call)
    for every matmul-softmax-matmul chain of ``graph`` over ``[batch, heads, tokens, d]``."""
    made_by: dict[int, Call] = {}
    found: dict[int, tuple[Call, Call, Call]] = {}
    for call in graph.calls:
        if _is_product(call):
            got = _scores_of(call.args[0], made_by)
            if got is not None:
                scores, added = got
                q, kt, v = scores.args[0], scores.args[1], call.args[1]
                if q.shape[-1] == kt.shape[-2] == v.shape[-1] and kt.shape[-1] == v.shape[-2]:
                    k = kt.transpose(-2, -1)  # [B, H, S, d]
                    flip = Call(torch.transpose, "transpose", (kt, -2, -1), {}, k, call.module)
                    heads = q.shape[1]
                    bias = [a for a in added if a.shape[1] == heads > 1]
                    kw: dict[str, Any] = {"attn_mask": bias[0]} if len(bias) == 1 else {}
                    sdpa = replace(
                        call,
                        func=F.scaled_dot_product_attention,
                        name="scaled_dot_product_attention",
                        args=(q, k, v),
                        kwargs=kw,
                    )
                    found[id(call)] = (flip, sdpa, scores)
        ins = {id(a) for a in (*call.args, *call.kwargs.values()) if isinstance(a, torch.Tensor)}
        for t in _outs(call.out):
            if id(t) not in ins:  # an op that returns its input (eval dropout) makes nothing
                made_by[id(t)] = call
    return found


def _outs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return []


def with_eager_attention(graph: Graph) -> Graph:
    """``graph`` with every eager attention chain's weighted sum read as an attention call."""
    found = eager_attention(graph)
    if not found:
        return graph
    calls: list[Call] = []
    for call in graph.calls:
        pair = found.get(id(call))
        calls += [pair[0], pair[1]] if pair is not None else [call]
    return replace(graph, calls=calls)
