"""Regression-based channel pruning (He, Zhang & Sun 2017): LASSO channel selection, then a
least-squares refit of the layer on the channels it keeps.

A layer computes ``Y = X Wᵀ = Σ_c Z_c`` with ``Z_c = X_c W_cᵀ`` the contribution of input
channel c (for a conv, all its kernel positions). Selection solves

    min_β ‖Y − Σ_c β_c Z_c‖² + λ‖β‖₁

and raises λ until at most k channels keep a non-zero β. Everything needed is in the input
Hessian: ``⟨Z_c, Z_d⟩ = Σ_{i∈c, j∈d} (XᵀX)_ij (WᵀW)_ij``, so no activations are stored. The kept
columns S are then refit: ``W_Sᵀ = (X_SᵀX_S)⁻¹ X_Sᵀ X Wᵀ``.
"""

from __future__ import annotations

import torch

from ..errors import WeightError


def channel_gram(weight: torch.Tensor, xtx: torch.Tensor, channels: int) -> torch.Tensor:
    """``G[c, d] = ⟨Z_c, Z_d⟩`` ``[C, C]`` for ``weight [out, K*C]`` (column = k*C + c)."""
    a = xtx * (weight.t() @ weight)  # [K*C, K*C]
    k = a.shape[0] // channels
    return a.view(k, channels, k, channels).sum(dim=(0, 2))


def lasso_gram(
    gram: torch.Tensor,
    b: torch.Tensor,
    lams: torch.Tensor,
    start: torch.Tensor,
    step: float,
    iters: int = 300,
) -> torch.Tensor:
    """FISTA for ``min_β βᵀGβ − 2bᵀβ + λ‖β‖₁`` (the LASSO in Gram form), for every λ of
    ``lams [L]`` at once, each from ``start [C]``; ``step`` is 1 / the gradient's Lipschitz
    constant. Returns ``[L, C]``."""
    beta = start.expand(len(lams), -1).clone()  # [L, C]
    y, t = beta.clone(), 1.0
    shrink = (step * lams).unsqueeze(1)  # [L, 1]
    for _ in range(iters):
        z = y - step * 2 * (y @ gram - b)  # gram is symmetric: y @ G = (G yᵀ)ᵀ
        new = z.sign() * (z.abs() - shrink).clamp_min(0.0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = new + ((t - 1) / t_next) * (new - beta)
        beta, t = new, t_next
    return beta


def select_channels(
    weight: torch.Tensor,
    xtx: torch.Tensor,
    channels: int,
    keep: int,
    forbidden: torch.Tensor | None = None,
    rounds: int = 10,
    per_round: int = 8,
) -> torch.Tensor:
    """A boolean ``[C]`` mask of the ``keep`` channels chosen by LASSO.

    λ is searched between 0 (every β non-zero) and a value where every β is zero: each round
    solves ``per_round`` evenly spaced λ of the bracket at once and keeps the sub-bracket where
    the count of non-zero β crosses ``keep`` (10 rounds of 8 narrow it 9¹⁰ times, more than
    30 bisection steps). ``forbidden [C]`` channels are never kept (already pruned).
    """
    gram = channel_gram(weight.float(), xtx.float(), channels)
    scale = gram.diagonal().mean().clamp_min(1e-12)
    gram = gram / scale  # λ is relative to the mean channel energy
    ones = torch.ones(channels, dtype=gram.dtype, device=gram.device)
    if forbidden is not None:
        ones = ones.masked_fill(forbidden, 0.0)
        gram = gram * (~forbidden).float().outer((~forbidden).float())
    b = gram @ ones
    step = 1.0 / float(2 * torch.linalg.eigvalsh(gram)[-1].clamp_min(1e-12))
    lo, hi = 0.0, float(2 * b.abs().max()) + 1e-6  # at hi every β is zero
    beta_lo = ones
    fractions = torch.arange(1, per_round + 1, dtype=gram.dtype) / (per_round + 1)
    for _ in range(rounds):
        lams = lo + (hi - lo) * fractions.to(gram.device)  # [L], increasing
        betas = lasso_gram(gram, b, lams, beta_lo, step)  # [L, C]
        enough = ((betas != 0).sum(1) >= keep).tolist()
        last = max((i for i, ok in enumerate(enough) if ok), default=-1)
        if last >= 0:
            lo, beta_lo = float(lams[last]), betas[last]
        if last + 1 < per_round:
            hi = float(lams[last + 1])
    rank = beta_lo.abs()
    if forbidden is not None:
        rank = rank.masked_fill(forbidden, -1.0)
    mask = torch.zeros(channels, dtype=torch.bool, device=gram.device)
    mask[torch.topk(rank, keep).indices] = True
    return mask


def refit(weight: torch.Tensor, xtx: torch.Tensor, kept: torch.Tensor, damp: float = 1e-3):
    """Least-squares weights on the kept columns ``kept [cols]``: ``[out, cols]``, zeros elsewhere.

    Minimises ‖X Wᵀ − X_S W_Sᵀ‖². Each diagonal entry of ``X_SᵀX_S`` is raised by ``damp`` of
    itself (a ridge that does not depend on the inputs' scales).
    """
    w = weight.float()
    h = xtx.float()
    hs = h[kept][:, kept]
    diag = hs.diagonal()
    hs = hs + torch.diag(damp * diag + 1e-8 * diag.mean().clamp_min(1e-12))
    chol, info = torch.linalg.cholesky_ex(hs)
    if info:
        raise WeightError("the kept channels' Hessian is singular; add calibration data")
    rhs = h[kept] @ w.t()  # [|S|, out]
    new = torch.zeros_like(w)
    new[:, kept] = torch.cholesky_solve(rhs, chol).t()
    return new
