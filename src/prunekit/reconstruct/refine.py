"""Mask refinement without retraining (in the spirit of DSnoT, Zhang et al. 2024): within each
row, swap a pruned weight for a kept one while that lowers the layer's reconstruction error.

For a row ``w`` (dense) and its pruned version ``ŵ``, the layer's output error on the calibration
inputs is ``E = δᵀHδ`` with ``δ = w − ŵ`` and ``H = XᵀX`` (damped). With ``g = Hδ``:

* growing a pruned weight j to its best value ``a = g_j / H_jj`` changes E by ``−g_j²/H_jj``;
* then pruning a kept weight k (value b) changes it by ``2b·g'_k + b²·H_kk`` (``g' = g − aH_j``).

Each cycle takes, in every row at once, the grow with the largest gain and the prune with the
smallest cost (in the same group of M for N:M), and applies the pair where the sum is negative:
every accepted swap lowers E, and the count of kept weights per row (and per N:M group) is exact.
"""

from __future__ import annotations

import torch

from ..calibrate import LayerStats
from ..errors import ConfigError
from ..masks import get_mask
from ..targets import Target


@torch.no_grad()
def refine_rows(
    dense: torch.Tensor,
    pruned: torch.Tensor,
    keep: torch.Tensor,
    hessian: torch.Tensor,
    *,
    cycles: int = 100,
    m: int | None = None,
    damp: float = 0.01,
    frozen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap weights within rows; returns ``(new weight, new keep mask)`` ``[rows, cols]``.

    ``dense``/``pruned`` are the row weights before and after pruning, ``keep`` the boolean mask,
    ``hessian`` ``[cols, cols]`` (XᵀX up to scale), ``m`` the N:M group size (swaps stay inside a
    group), ``frozen`` ``[rows, cols]`` pruned entries that may never grow (an earlier mask).
    """
    w = dense.double()
    what = pruned.double().clone()
    keep = keep.clone()
    H = hessian.double().clone()
    dead = H.diagonal() == 0
    H.diagonal().add_(damp * H.diagonal().mean().clamp_min(1e-12))
    H[dead, dead] = 1.0
    hdiag = H.diagonal()
    g = (w - what) @ H  # [rows, cols]; H is symmetric
    rows, cols = w.shape
    blocked = dead.expand(rows, cols) if frozen is None else frozen | dead
    live = torch.arange(rows, device=w.device)  # rows still improving (a row that fails stops)
    col = torch.arange(cols, device=w.device)
    for _ in range(cycles):
        # every tensor below is [len(live), cols]: only rows still improving are touched
        g_l, what_l, keep_l = g[live], what[live], keep[live]
        r = torch.arange(live.numel(), device=w.device)
        gain = (g_l.square() / hdiag).masked_fill(keep_l | blocked[live], -1.0)  # grow gain
        j = gain.argmax(1)
        a = g_l[r, j] / hdiag[j]
        g2 = g_l - a[:, None] * H[j]  # after growing j
        cost = 2 * what_l * g2 + what_l.square() * hdiag  # prune cost, kept only
        allowed = keep_l
        allowed[r, j] = False  # keep_l is a copy (advanced indexing)
        if m is not None:  # the prune must come from j's group of M
            allowed &= (col[None, :] // m) == (j // m)[:, None]
        k = cost.masked_fill(~allowed, torch.inf).argmin(1)
        total = -gain[r, j] + cost[r, k]
        ok = (gain[r, j] > 0) & (total < -1e-12 * (g_l.abs().sum(1) + 1e-30))
        if not ok.any():
            break
        rr, jj, kk = live[ok], j[ok], k[ok]
        b = what[rr, kk]
        # apply: grow j (δ_j -= a), prune k (δ_k += b); g follows H's rows
        what[rr, jj] = a[ok]
        what[rr, kk] = 0.0
        g[rr] = g2[ok] + b[:, None] * H[kk]
        keep[rr, jj] = True
        keep[rr, kk] = False
        live = rr
    return what.to(pruned.dtype).masked_fill(~keep, 0.0), keep


@torch.no_grad()
def refit_rows(
    dense: torch.Tensor,
    pruned: torch.Tensor,
    keep: torch.Tensor,
    hessian: torch.Tensor,
    *,
    iters: int = 10,
    damp: float = 0.01,
) -> torch.Tensor:
    """The kept weights re-fitted by least squares, the mask fixed: ``[rows, cols]``.

    Minimises every row's ``(w − v)ᵀH(w − v)`` over ``v`` supported on ``keep`` (H damped as in
    :func:`refine_rows`), by ``iters`` steps of Jacobi-preconditioned conjugate gradients on all
    rows at once, from ``pruned``; each step costs one ``[rows, cols] @ [cols, cols]`` product.
    A row whose error did not drop keeps its ``pruned`` weights.
    """
    H = hessian.float().clone()
    dead = H.diagonal() == 0
    H.diagonal().add_(damp * H.diagonal().mean().clamp_min(1e-12))
    H[dead, dead] = 1.0
    mask = keep.float()
    inv_diag = 1.0 / H.diagonal()
    w, v = dense.float(), pruned.float().clone()
    r = ((w - v) @ H) * mask  # [rows, cols] residual of the masked normal equations
    z = r * inv_diag
    p = z.clone()
    rz = (r * z).sum(1, keepdim=True)  # [rows, 1]
    for _ in range(iters):
        ap = (p @ H) * mask
        alpha = rz / (p * ap).sum(1, keepdim=True).clamp_min(1e-30)
        v.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1.0)
        z = r * inv_diag
        rz_new = (r * z).sum(1, keepdim=True)
        p = z + (rz_new / rz.clamp_min(1e-30)) * p
        rz = rz_new
    v = v * mask
    before = (((w - pruned.float()) @ H) * (w - pruned.float())).sum(1)
    after = (((w - v) @ H) * (w - v)).sum(1)
    better = (after < before) & torch.isfinite(after)
    return torch.where(better[:, None], v, pruned.float()).to(pruned.dtype)


def layer_error(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Σ over rows of ``(w − ŵ)ᵀ H (w − ŵ)``: the layer's output error on the calibration data."""
    d = (dense - pruned).double()
    return ((d @ hessian.double()) * d).sum()


def refine_target(
    target: Target,
    dense: torch.Tensor,
    keep: torch.Tensor,
    stats: LayerStats,
    m: int | None = None,
    cycles: int = 30,
) -> torch.Tensor:
    """Refine one target's ``[out, in]`` ``keep`` mask against its calibration Hessian, then
    re-fit its kept weights (:func:`refit_rows`); the target's weight is rewritten (pruned
    entries zero, grown ones set); returns the new mask.

    ``dense`` is the target's matrix before pruning; weights an earlier mask pruned never grow.
    With G conv groups, output rows of chunk g are refined against ``XᵀX[g]``.
    """
    if stats is None or stats.inputs is None or stats.inputs.xtx is None:
        raise ConfigError(f"refine needs the 'hessian' statistic for {target.qualname}")
    xtx = stats.inputs.xtx  # [G, cols, cols]
    old = get_mask(target.module, target.param)
    frozen = None if old is None else ~target.to_matrix(old)
    current = target.matrix().detach().float().masked_fill(~keep, 0.0)
    rows = current.shape[0] // xtx.shape[0]
    new_w, new_keep = torch.empty_like(current), torch.empty_like(keep)
    for g in range(xtx.shape[0]):
        sl = slice(g * rows, (g + 1) * rows)
        new_w[sl], new_keep[sl] = refine_rows(
            dense[sl],
            current[sl],
            keep[sl],
            xtx[g],
            cycles=cycles,
            m=m,
            frozen=None if frozen is None else frozen[sl],
        )
        new_w[sl] = refit_rows(dense[sl], new_w[sl], new_keep[sl], xtx[g])
    w = target.weight
    w.data.copy_(target.from_matrix(new_w).to(w.dtype))
    return new_keep
