"""Eager attention in a trace: ``product -> (scale, mask, bias) -> softmax -> product``.

:func:`with_eager_attention` rewrites each such chain of a recorded forward as the
``scaled_dot_product_attention`` call it computes (``q``, ``k``, ``v``, and a per-head bias added
to the scores as ``attn_mask``), so that :mod:`.attention` reads the heads of hand-written
attention exactly as it reads those of ``F.scaled_dot_product_attention``. The scores product
itself stays in the trace (a product of activations); only the weighted sum of values becomes
the attention call, whose output then gets per-head channel ids.

A product is ``matmul``/``@``/``bmm`` over ``[batch, heads, tokens, d]`` or, heads folded into
the batch, ``[batch * heads, tokens, d]``, or an ``einsum`` of two such operands in any layout
(``'bhqd,bhkd->bhqk'``, ``'ibnd,jbnd->ijbn'``). Operands are read as index letters: batch letters
(in both operands and the output), one letter contracted, one of each operand's own; the
rewrite permutes q, k, v (and the bias) into ``[batch..., tokens, d]`` and the attention's output
back into the product's layout, with recorded ``permute`` calls that the channel rules replay.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from .graph import Call, Graph

#: products of two activations that compute scores or weight the values
_PRODUCTS = ("matmul", "__matmul__", "bmm", "einsum")
#: ops allowed between the scores product and the softmax, and after the softmax
_SCORES = {
    "add", "__add__", "__iadd__", "__radd__", "sub", "__sub__", "mul", "__mul__", "__rmul__",
    "__imul__", "div", "__truediv__", "__itruediv__", "true_divide", "masked_fill", "where",
    "to", "float", "half", "bfloat16", "double", "type_as", "contiguous", "clone", "dropout",
}  # fmt: skip
_ADDS = {"add", "__add__", "__iadd__", "__radd__", "sub", "__sub__"}


def _operands(call: Call) -> list[torch.Tensor] | None:
    """The two tensors a product multiplies, or None."""
    ops = call.args[1:] if call.name == "einsum" else call.args[:2]
    if call.name == "einsum" and len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = tuple(ops[0])
    ins = [a for a in ops if isinstance(a, torch.Tensor)]
    return ins if len(ops) == len(ins) == 2 else None


def _equation(call: Call) -> tuple[str, str, str] | None:
    """The index letters (operand 1, operand 2, output) of a product of two 3-D or 4-D
    activations with batch letters, one contracted letter and one letter of each operand's own;
    None for anything else (a weight, a vector, an einsum that sums or traces more)."""
    ins = _operands(call) if call.name in _PRODUCTS else None
    if ins is None or any(isinstance(t, torch.nn.Parameter) or t.dim() not in (3, 4) for t in ins):
        return None
    n = ins[0].dim()
    if call.name != "einsum":
        batch = "zy"[: n - 2]
        return (batch + "ab", batch + "bc", batch + "ac") if ins[1].dim() == n else None
    eq = call.args[0].replace(" ", "") if isinstance(call.args[0], str) else ""
    if eq.count("->") != 1 or "." in eq or eq.count(",") != 1:
        return None
    lhs, out = eq.split("->")
    a, b = lhs.split(",")
    if not len(a) == len(b) == len(out) == n == ins[1].dim():
        return None
    if any(len(set(s)) != len(s) for s in (a, b, out)) or not set(out) <= set(a) | set(b):
        return None
    contracted = (set(a) & set(b)) - set(out)
    if len(contracted) != 1 or len(set(a) - set(b)) != 1 or len(set(b) - set(a)) != 1:
        return None
    return a, b, out


def _is_product(call: Call) -> bool:
    return _equation(call) is not None


def _scores_of(
    probs: torch.Tensor, made_by: dict[int, Call]
) -> tuple[Call, list[torch.Tensor]] | None:
    """The scores product behind attention weights ``probs`` (through exactly one softmax), and
    the tensors added to the scores before the softmax."""
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
            added += [a for a in ins if a is not main[0] and 2 <= a.dim() <= main[0].dim()]
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


def _permute(t: torch.Tensor, order: list[int], module: str, into: list[Call]) -> torch.Tensor:
    """``t.permute(order)``, recorded in ``into`` unless it is the identity."""
    if order == sorted(order):
        return t
    out = t.permute(order)
    into.append(Call(torch.permute, "permute", (t, tuple(order)), {}, out, module))
    return out


def _unsqueeze(t: torch.Tensor, dims: int, into: list[Call]) -> torch.Tensor:
    """``t`` with leading size-1 dimensions up to ``dims`` (as broadcasting reads it), recorded
    in ``into`` where it has fewer."""
    if t.dim() == dims:
        return t
    shape = (1,) * (dims - t.dim()) + tuple(t.shape)
    out = t.reshape(shape)
    into.append(Call(torch.reshape, "reshape", (t, shape), {}, out, ""))
    return out


def _rewrite(call: Call, made_by: dict[int, Call]) -> list[Call] | None:
    """The calls that compute weighted-sum product ``call`` as an attention call (with the
    permutes into and out of its layout), or None where ``call`` weights no softmax of scores."""
    eq, ins = _equation(call), _operands(call)
    if eq is None or ins is None:
        return None
    for p in (0, 1) if call.name == "einsum" else (0,):  # which operand holds the weights
        got = _scores_of(ins[p], made_by)
        if got is None:
            continue
        (scores, added), (pl, vl, ol) = got, (eq[p], eq[1 - p], eq[2])
        seq, s_ins = _equation(scores), _operands(scores)
        (j,) = (set(pl) & set(vl)) - set(ol)  # key tokens
        (i,), (dv,) = set(pl) - set(vl), set(vl) - set(pl)  # query tokens, value channels
        batch = [c for c in ol if c in pl and c in vl]
        pos = [pl.index(c) for c in [*batch, i, j]]  # [batch..., i, j] in the weights' layout
        letters = [seq[2][x] for x in pos]  # the same dimensions, named as the scores name them
        qi = 0 if letters[-2] in seq[0] else 1
        ql, kl = seq[qi], seq[1 - qi]
        if letters[-2] not in ql or letters[-1] not in kl or letters[-1] in ql:
            continue
        (d,) = (set(ql) & set(kl)) - set(seq[2])
        calls: list[Call] = []
        q = _permute(s_ins[qi], [ql.index(c) for c in [*letters[:-2], letters[-2], d]], "", calls)
        k = _permute(
            s_ins[1 - qi], [kl.index(c) for c in [*letters[:-2], letters[-1], d]], "", calls
        )
        v = _permute(ins[1 - p], [vl.index(c) for c in [*batch, j, dv]], "", calls)
        if not (q.shape[-1] == k.shape[-1] and k.shape[-2] == v.shape[-2]):
            continue
        heads = q.shape[1] if q.dim() == 4 else q.shape[0]
        added = [_unsqueeze(a, q.dim(), calls) for a in added]  # broadcast to the scores' dims
        bias = [
            _permute(a, pos, "", calls) for a in added if a.shape[pos[q.dim() - 3]] == heads > 1
        ]
        for c in calls:
            c.module = call.module
        kw: dict[str, Any] = {"attn_mask": bias[0]} if len(bias) == 1 else {}
        order = [ol.index(c) for c in [*batch, i, dv]]
        out = call.out if order == sorted(order) else call.out.permute(order)
        calls.append(
            Call(
                F.scaled_dot_product_attention, "scaled_dot_product_attention", (q, k, v), kw,
                out, call.module,
            )
        )  # fmt: skip
        if out is not call.out:
            back = sorted(range(len(order)), key=order.__getitem__)
            calls.append(
                Call(torch.permute, "permute", (out, tuple(back)), {}, call.out, call.module)
            )
        return calls
    return None


def eager_attention(graph: Graph) -> dict[int, list[Call]]:
    """id(weighted-sum call) -> the calls that replace it (permutes, the attention call) for
    every product-softmax-product chain of ``graph``."""
    made_by: dict[int, Call] = {}
    found: dict[int, list[Call]] = {}
    for call in graph.calls:
        if call.name in _PRODUCTS:
            calls = _rewrite(call, made_by)
            if calls is not None:
                found[id(call)] = calls
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
        calls += found.get(id(call), [call])
    return replace(graph, calls=calls)


def heads_fold(atoms: torch.Tensor) -> tuple[int, bool]:
    """How heads are folded into the first dimension of a ``[batch * heads, ...]`` tensor whose
    channel ids are ``atoms`` (size 1 where they do not vary): the fewest heads whose ids repeat
    for every batch element, and whether heads are the outer factor (``[heads * batch]``)."""
    n = atoms.shape[0]
    rows = atoms.reshape(n, -1)
    for h in (h for h in range(1, n + 1) if n % h == 0):
        if bool((rows.view(n // h, h, -1) == rows[:h]).all()):
            return h, False
        outer = rows.view(h, n // h, -1)
        if bool((outer == outer[:, :1]).all()):
            return h, True
    return n, False


def unfold_heads(t: torch.Tensor, heads: int, outer: bool) -> torch.Tensor:
    """``[batch * heads, ...]`` -> ``[batch, heads, ...]`` (see :func:`heads_fold`)."""
    n = t.shape[0]
    if outer:
        return t.reshape(heads, n // heads, *t.shape[1:]).transpose(0, 1)
    return t.reshape(n // heads, heads, *t.shape[1:])


def fold_heads(t: torch.Tensor, outer: bool) -> torch.Tensor:
    """``[batch, heads, ...]`` -> ``[batch * heads, ...]``: the inverse of :func:`unfold_heads`."""
    return (t.transpose(0, 1) if outer else t).reshape(-1, *t.shape[2:])
