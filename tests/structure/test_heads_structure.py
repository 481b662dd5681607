"""Heads found by structure alone: plain ``nn.Module`` attentions with names no adapter or naming
fallback knows (``to_q``/``to_k``/``to_v``/``proj``, a fused ``qkv``), eager matmul-softmax-matmul
or ``scaled_dot_product_attention``, heads folded into the batch (``bmm`` over ``[B * H, T, D]``)
and ``einsum`` in several layouts.

Each shrunk model is checked against the ORIGINAL model whose dropped heads are silenced by zeroing
their output-projection columns (an independent computation: no prunekit code runs on it), its
weights against the original rows and columns of the kept heads, and its reload in a fresh process.
Attention whose heads meet outside the attention is refused by name, the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.errors import TargetError
from prunekit.masks import get_mask

E, H, D, T = 32, 4, 8, 6  # width, heads, head size, tokens


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sdpa: bool) -> torch.Tensor:
    """[B, H, T, D] each -> [B, H, T, D]."""
    if sdpa:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    causal = torch.full((q.shape[2], k.shape[2]), float("-inf")).triu(1)  # [T, S]
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + causal
    return F.dropout(scores.softmax(-1), 0.1, training=False) @ v


def _merge(out: torch.Tensor) -> torch.Tensor:
    b, h, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, h * d)  # [B, T, H * D]


class Separate(nn.Module):
    """to_q / to_k / to_v / proj, heads in ``self.heads``."""

    def __init__(self, sdpa: bool = False) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v = (nn.Linear(E, H * D) for _ in range(3))
        self.proj = nn.Linear(H * D, E)
        self.heads, self.sdpa = H, sdpa

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """q, k, v: [B, heads, T, D] each."""
        b, t, _ = x.shape
        return [
            f(x).view(b, t, self.heads, -1).transpose(1, 2)
            for f in (self.to_q, self.to_k, self.to_v)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(_merge(_attend(*self.split(x), self.sdpa)))


class FusedChunk(nn.Module):
    """One ``qkv`` Linear cut by ``chunk(3)``; heads in ``n_heads``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(E, 3 * H * D), nn.Linear(H * D, E)
        self.n_heads = H

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (
            p.reshape(b, t, self.n_heads, D).permute(0, 2, 1, 3) for p in self.qkv(x).chunk(3, -1)
        )
        return self.out(_merge(_attend(q, k, v, False)))


class FusedReshape(nn.Module):
    """One ``qkv`` Linear reshaped to ``[B, T, 3, H, D]`` (timm's layout)."""

    def __init__(self, sdpa: bool = False) -> None:
        super().__init__()
        self.qkv, self.mix = nn.Linear(E, 3 * H * D), nn.Linear(H * D, E)
        self.num_heads, self.sdpa = H, sdpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = (
            self.qkv(x).reshape(b, t, 3, self.num_heads, D).permute(2, 0, 3, 1, 4)
        )  # [3, B, H, T, D]
        q, k, v = qkv.unbind(0)
        return self.mix(_merge(_attend(q, k, v, self.sdpa)))


class Grouped(nn.Module):
    """GQA: 4 query heads, 2 key/value heads repeated with ``repeat_interleave``."""

    def __init__(self, sdpa: bool = False) -> None:
        super().__init__()
        self.wq, self.wk, self.wv = nn.Linear(E, H * D), nn.Linear(E, 2 * D), nn.Linear(E, 2 * D)
        self.wo = nn.Linear(H * D, E)
        self.n_heads, self.n_kv_heads, self.sdpa = H, 2, sdpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, D).transpose(1, 2)
        k, v = (f(x).view(b, t, self.n_kv_heads, D).transpose(1, 2) for f in (self.wk, self.wv))
        rep = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)  # [B, H, T, D]
        return self.wo(_merge(_attend(q, k, v, self.sdpa)))


class Biased(Separate):
    """Eager attention with a learned per-head score bias ``rel`` ``[H, T, T]`` (or, ``alibi``,
    per-head slopes made by the code: a per-head tensor of unknown origin)."""

    def __init__(self, alibi: bool = False) -> None:
        super().__init__()
        self.rel = nn.Parameter(torch.randn(H, T, T))
        self.alibi = alibi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(x)
        t = x.shape[1]
        if self.alibi:
            slopes = 2.0 ** -torch.arange(1.0, self.heads + 1)  # [H]
            bias = slopes[:, None, None] * torch.arange(t)[None, None, :]  # [H, 1, T]
        else:
            bias = self.rel  # [H, T, T]
        scores = (q @ k.transpose(-2, -1)) / D**0.5 + bias[None]
        return self.proj(_merge(scores.softmax(-1) @ v))


class Folded(Separate):
    """Heads folded into the batch, ``[B * H, T, D]`` (``outer``: ``[H * B, T, D]``), attended
    by ``bmm``-softmax-``bmm`` with a padding mask per batch row, or by a 3-D
    ``scaled_dot_product_attention``."""

    def __init__(self, outer: bool = False, sdpa: bool = False, misfold: bool = False) -> None:
        super().__init__(sdpa)
        self.outer, self.misfold = outer, misfold  # misfold: the mask folded the other way

    def fold(self, z: torch.Tensor, outer: bool | None = None) -> torch.Tensor:
        """[B, H, T, S] -> [B * H, T, S] (or [H * B, T, S])."""
        outer = self.outer if outer is None else outer
        return (z.transpose(0, 1) if outer else z).reshape(-1, *z.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (self.fold(z) for z in self.split(x))
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            pad = torch.zeros(b, self.heads, 1, t)
            pad[0, :, :, -1] = float("-inf")  # batch row 0 ignores its last token
            pad = self.fold(pad, self.outer != self.misfold)
            scores = torch.bmm(q, k.transpose(1, 2)) / D**0.5 + pad
            out = torch.bmm(scores.softmax(-1), v)  # [B * H, T, D]
        if self.outer:
            return self.proj(_merge(out.view(self.heads, b, t, D).transpose(0, 1)))
        return self.proj(_merge(out.view(b, self.heads, t, D)))


class Einsum(Separate):
    """``einsum`` attention: ``'bhqd,bhkd->bhqk'`` over ``[B, H, T, D]``; ``tokens``: over
    ``[B, T, H, D]`` (``'bqhd,bkhd->bhqk'``); ``swapped``: keys and values first, scores laid out
    ``[B, Tq, Tk, H]``; ``folded``: ``'bid,bjd->bij'`` over ``[B * H, T, D]``."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.split(x)  # [B, H, T, D]
        if self.layout == "heads":
            s = torch.einsum("bhqd,bhkd->bhqk", q, k) / D**0.5
            return self.proj(_merge(torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v)))
        if self.layout == "folded":
            q, k, v = (z.reshape(-1, t, D) for z in (q, k, v))
            s = torch.einsum("bid,bjd->bij", q, k) / D**0.5
            out = torch.einsum("bij,bjd->bid", s.softmax(-1), v)
            return self.proj(_merge(out.view(b, self.heads, t, D)))
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, T, H, D]
        if self.layout == "tokens":
            s = torch.einsum("bqhd,bkhd->bhqk", q, k) / D**0.5
            out = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)
        else:  # swapped
            s = torch.einsum("bkhd,bqhd->bqkh", k, q) / D**0.5
            out = torch.einsum("bkhd,bqkh->bqhd", v, s.softmax(2))
        return self.proj(out.reshape(b, t, -1))


class MatMul(nn.Module):
    """A product issued inside its own module (SqueezeBERT's ``MatMulWrapper``)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class Wrapped(Separate):
    """Scores and context computed by child modules that hold no head count: the count is read
    from the nearest ancestor that does."""

    def __init__(self) -> None:
        super().__init__()
        self.scores, self.context = MatMul(), MatMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(x)
        s = self.scores(q, k.transpose(-2, -1)) / D**0.5
        return self.proj(_merge(self.context(s.softmax(-1), v)))


class Block(nn.Module):
    """Two attentions with a residual, so layers can keep different heads."""

    def __init__(self, make) -> None:
        super().__init__()
        self.emb = nn.Linear(12, E)
        self.a, self.b = make(), make()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        h = h + self.a(h)
        return h + self.b(h)


#: name -> (factory, output projection, [(projection, its [q|k|v] parts, per-part units)])
CASES = {
    "separate-eager": (lambda: Separate(), "proj", [("to_q", 1), ("to_k", 1), ("to_v", 1)]),
    "separate-sdpa": (lambda: Separate(sdpa=True), "proj", [("to_q", 1), ("to_v", 1)]),
    "fused-chunk": (FusedChunk, "out", [("qkv", 3)]),
    "fused-reshape-eager": (FusedReshape, "mix", [("qkv", 3)]),
    "fused-reshape-sdpa": (lambda: FusedReshape(sdpa=True), "mix", [("qkv", 3)]),
    "gqa-eager": (Grouped, "wo", [("wq", 1)]),
    "gqa-sdpa": (lambda: Grouped(sdpa=True), "wo", [("wq", 1)]),
    "score-bias": (Biased, "proj", [("to_q", 1), ("to_k", 1), ("to_v", 1)]),
    "bmm-folded": (Folded, "proj", [("to_q", 1), ("to_k", 1), ("to_v", 1)]),
    "bmm-folded-outer": (lambda: Folded(outer=True), "proj", [("to_q", 1), ("to_v", 1)]),
    "sdpa-folded": (lambda: Folded(sdpa=True), "proj", [("to_q", 1), ("to_k", 1)]),
    "wrapped-products": (Wrapped, "proj", [("to_q", 1), ("to_k", 1), ("to_v", 1)]),
}
CASES.update(
    {
        f"einsum-{layout}": (
            lambda layout=layout: Einsum(layout),
            "proj",
            [("to_q", 1), ("to_k", 1), ("to_v", 1)],
        )
        for layout in ("heads", "tokens", "swapped", "folded")
    }
)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return Block(CASES[name][0]).eval()


def inputs() -> torch.Tensor:
    return torch.randn(2, T, 12, generator=torch.Generator().manual_seed(1))


def _kept(model: nn.Module, out: str) -> list[int]:
    cols = get_mask(model.get_submodule(out), "weight").any(0)  # [H * D]
    kept = [h for h in range(H) if bool(cols[h * D : (h + 1) * D].all())]
    assert int(cols.sum()) == len(kept) * D  # whole heads only
    return kept


def _rows(heads: list[int], parts: int) -> torch.Tensor:
    return torch.tensor(
        [p * H * D + h * D + j for p in range(parts) for h in heads for j in range(D)]
    )


_RELOAD = """
import torch
import prunekit as pk
from tests.structure.test_heads_structure import build, inputs
m = pk.load(saved, model=build(name)).eval()
with torch.no_grad():
    assert torch.equal(m(inputs()), torch.load(ref))
"""


@pytest.mark.parametrize("name", sorted(CASES))
def test_structure_finds_heads_of_unnamed_attention(name, tmp_path, loader):
    _, out, parts = CASES[name]
    model, x = build(name), inputs()
    original = copy.deepcopy(model)
    pk.prune(model, 0.5, granularity="head", example_inputs=x)
    kept = {m: _kept(model, f"{m}.{out}") for m in ("a", "b")}
    assert all(len(k) == 2 for k in kept.values())  # 50% of the heads of each layer
    small = pk.shrink(model, x)
    silenced = copy.deepcopy(original)  # the original, dropped heads' output columns zeroed
    with torch.no_grad():
        for m, heads in kept.items():
            w = silenced.get_submodule(f"{m}.{out}").weight
            for h in set(range(H)) - set(heads):
                w[:, h * D : (h + 1) * D] = 0
        expected = silenced(x)
        got = small(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, original(x), atol=1e-4)  # heads really went
    for m, heads in kept.items():
        o = original.get_submodule(f"{m}.{out}").weight
        assert torch.equal(small.get_submodule(f"{m}.{out}").weight, o[:, _rows(heads, 1)])
        for proj, n in parts:
            w = original.get_submodule(f"{m}.{proj}").weight
            assert torch.equal(small.get_submodule(f"{m}.{proj}").weight, w[_rows(heads, n)])
    if name == "score-bias":  # the per-head bias table keeps the kept heads' tables
        for m, heads in kept.items():
            rel = original.get_submodule(m).rel
            assert torch.equal(small.get_submodule(m).rel, rel[heads])
    if name.startswith("gqa"):  # KV head g serves query heads 2g, 2g + 1: kept in pairs or not
        for m, heads in kept.items():
            groups = sorted({h // 2 for h in heads})
            wk = original.get_submodule(f"{m}.wk").weight
            kv_rows = torch.tensor([g * D + j for g in groups for j in range(D)])
            assert torch.equal(small.get_submodule(f"{m}.wk").weight, wk[kv_rows])
    pk.save(small, tmp_path / "m")
    torch.save(got, tmp_path / "expected.pt")
    loader.run(_RELOAD, saved=tmp_path / "m", ref=tmp_path / "expected.pt", name=name)


class TalkingHeads(Separate):
    """A Linear across the head dimension of the attention output: heads are mixed."""

    def __init__(self) -> None:
        super().__init__()
        self.talk = nn.Linear(H, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(x)
        out = self.talk(_attend(q, k, v, False).transpose(1, 3)).transpose(1, 3)  # mixes heads
        return self.proj(_merge(out))


class HeadMean(Separate):
    """Queries centred over the heads (a mean across the head dimension)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(x)
        q = q - q.mean(1, keepdim=True)  # [B, H, T, D]: every head reads the others
        return self.proj(_merge(_attend(q, k, v, True)))


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (TalkingHeads, r"output does not reach an output projection"),
        (HeadMean, r"combined outside the attention \(mean in module a\)"),
        (lambda: Biased(alibi=True), r"per-head tensor of unknown origin"),
        (lambda: Folded(outer=True, misfold=True), r"per-head tensor of unknown origin"),
    ],
)
def test_attention_whose_heads_mix_is_refused_untouched(make, why):
    torch.manual_seed(0)
    model, x = Block(make).eval(), inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TargetError, match=rf"heads of a \({type(model.a).__name__}\): .*{why}"):
        pk.prune(model, 0.5, granularity="head", example_inputs=x)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
