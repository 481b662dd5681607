"""SparseGPT (Frantar & Alistarh 2023): optimal-brain-surgeon pruning with lazy column updates.

For a layer ``W [rows, cols]`` whose inputs ``X`` give the Hessian ``H = 2XᵀX/N [cols, cols]`` of
the reconstruction error ‖WX − ŴX‖², the columns are pruned left to right. Pruning weight
``w_rj`` costs ``w_rj² / [H⁻¹]_jj²``; its error is spread over the row's later columns through the
upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = UᵀU``), which gives every step's inverse Hessian
without re-inverting. Columns go in blocks of 128: inside a block, updates are applied column by
column; the block's accumulated error is applied to the later columns in one matrix product.

Masks are chosen per block (unstructured: the lowest-saliency weights of the block's columns,
per row segment, at that segment's sparsity) or per group of M columns inside the column loop
(N:M). Rows of several layers that share one Hessian (q/k/v) are solved together, each layer a
row segment with its own count.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import WeightError
from ..threads import torch_threads


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of the stacked weight, of which ``prune`` weights are to go."""

    start: int
    stop: int
    prune: int


def inverse_hessian_factor(
    hessian: torch.Tensor,
    damp: float = 0.01,
    name: str = "layer",
    retries: int = 6,
    *,
    scale: float = 1.0,
    dead: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(sH + λI)⁻¹`` (``H⁻¹ = UᵀU``), ``λ = damp · mean(diag sH)``.

    ``s = scale`` (the caller may pass the raw XᵀX accumulator and ``2/N``); ``dead [cols]``
    columns (inputs that never fired) get a unit diagonal and no coupling. The factor is built in
    one working copy of the Hessian, in place (Cholesky, inverse from the factor, Cholesky of the
    inverse), so the peak is the caller's Hessian plus one; and on one thread, because LAPACK's
    blocked Cholesky rounds differently with the thread count (the masks followed it). A Hessian
    that is not positive definite at this damping is retried with ten times more, with a
    warning; one that still fails raises :class:`WeightError`.
    """
    # a NaN or inf input shows on the diagonal of XᵀX
    if not torch.isfinite(hessian.diagonal()).all():
        raise WeightError(f"{name}: the calibration Hessian holds NaN or inf values")
    diag = hessian.diagonal() * scale
    if dead is not None:
        diag = diag.masked_fill(dead, 1.0)
    mean_diag = diag.mean().clamp_min(1e-8)
    info = torch.empty((), dtype=torch.int32, device=hessian.device)
    for attempt in range(retries + 1):
        frac = damp * 10**attempt
        # the one working copy [cols, cols], seen transposed: symmetric, and column-major as
        # LAPACK wants it, so that the in-place factorisations below make no copies
        h = torch.mul(hessian, scale).mT
        if dead is not None:
            h[dead] = 0.0
            h[:, dead] = 0.0
        h.diagonal().copy_(diag + frac * mean_diag)
        with _one_thread(h):
            torch.linalg.cholesky_ex(h, out=(h, info))  # H = LLᵀ, L in h
            if not info:
                torch.cholesky_inverse(h, out=h)  # H⁻¹
                torch.linalg.cholesky_ex(h, upper=True, out=(h, info))  # H⁻¹ = UᵀU
        if not info and torch.isfinite(h.diagonal()).all():
            if attempt:
                warnings.warn(
                    f"{name}: the Hessian is not positive definite at {damp:g} damping; "
                    f"solved with damping {frac:g} of its mean diagonal instead",
                    stacklevel=3,
                )
            return h
        del h
    raise WeightError(
        f"{name}: the Hessian is not positive definite even at damping {frac:g}; "
        "the calibration data may be degenerate"
    )


def _one_thread(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """One intra-op thread for CPU tensors (sequential ops, or thread-independent rounding)."""
    return torch_threads(1) if t.device.type == "cpu" else contextlib.nullcontext()


def _column_loop(
    Wt: torch.Tensor,
    U1: torch.Tensor,
    d: torch.Tensor,
    dead1: torch.Tensor,
    forced1: torch.Tensor | None,
    Pt: torch.Tensor,
    scale: torch.Tensor,
    Et: torch.Tensor,
    nm: tuple[int, int] | None,
) -> None:
    """One block's sequential OBS updates, in place. ``Wt``, ``Pt``, ``scale``, ``Et`` are
    ``[b, rows]`` (block columns as rows); N:M masks are chosen here, every M columns."""
    for i in range(Wt.shape[0]):
        if nm is not None and i % nm[1] == 0:
            keep_n, m = nm
            grp = Wt[i : i + m].square() / d[i : i + m].square()  # [m, rows]
            grp[dead1[i : i + m]] = 0.0
            if forced1 is not None:
                grp[forced1[i : i + m]] = -1.0
            idx = torch.topk(grp, m - keep_n, dim=0, largest=False).indices
            Pt[i : i + m].scatter_(0, idx, True)
            if forced1 is not None:
                Pt[i : i + m] |= forced1[i : i + m]
            scale[i : i + m] = Pt[i : i + m].float() / d[i : i + m]
        torch.mul(Wt[i], scale[i], out=Et[i])
        Wt[i:].addr_(U1[i, i:], Et[i], alpha=-1.0)  # also turns row i into its pruned q


def check_fits(square: torch.Tensor, parts: list[torch.Tensor], name: str) -> tuple[int, int]:
    """``(rows, cols)`` of the stacked row blocks ``parts``; raise unless ``square`` is
    ``[cols, cols]``."""
    rows, cols = sum(p.shape[0] for p in parts), parts[0].shape[1]
    if square.shape != (cols, cols):
        raise WeightError(
            f"{name}: Hessian {tuple(square.shape)} does not fit weight {(rows, cols)}"
        )
    return rows, cols


@torch.no_grad()
def sparsegpt(
    weight: torch.Tensor | Sequence[torch.Tensor],
    hessian: torch.Tensor,
    segments: list[Segment],
    nm: tuple[int, int] | None = None,
    forced: torch.Tensor | None = None,
    blocksize: int = 128,
    damp: float = 0.01,
    name: str = "layer",
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune and reconstruct ``weight [rows, cols]``; returns ``(new weight, keep mask)``.

    ``weight`` may be a list of row blocks (layers sharing one Hessian), stacked in order.

    ``nm = (keep, m)`` keeps ``keep`` of every ``m`` consecutive columns (``segments``' counts
    are then ignored). ``forced [rows, cols]`` marks weights that must be pruned (an earlier
    mask). Inputs that never fired (``H_jj = 0``) score zero, so they go first; they receive no
    error updates. ``hessian`` may be the raw XᵀX with ``scale = 2/N`` (no scaled copy is made).
    Float32 throughout; the inputs are not modified. The factor of the inverse Hessian is
    built first (:func:`inverse_hessian_factor`), then the sweep runs
    (:func:`prune_with_factor`); a caller that owns the Hessian can call the two itself and free
    the Hessian in between.
    """
    parts = [weight] if isinstance(weight, torch.Tensor) else list(weight)
    check_fits(hessian, parts, name)
    dead = hessian.diagonal() == 0
    U = inverse_hessian_factor(hessian.detach(), damp, name, scale=scale, dead=dead)  # upper
    return prune_with_factor(weight, U, dead, segments, nm, forced, blocksize, name)


@torch.no_grad()
def prune_with_factor(
    weight: torch.Tensor | Sequence[torch.Tensor],
    factor: torch.Tensor,
    dead: torch.Tensor,
    segments: list[Segment],
    nm: tuple[int, int] | None = None,
    forced: torch.Tensor | None = None,
    blocksize: int = 128,
    name: str = "layer",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sparsegpt`'s column sweep, given the upper factor ``U [cols, cols]`` of the
    damped inverse Hessian and its ``dead [cols]`` columns; ``U`` is updated in no way.

    Memory: one working copy of the weight (held transposed, so that every block and every
    lazy update is contiguous and no temporary is made; the row blocks and any other dtype are
    copied straight into it), its mask, ``U``, and ``[blocksize, rows]`` temporaries. The
    results are transposed views.
    """
    U = factor
    parts = [weight] if isinstance(weight, torch.Tensor) else list(weight)
    rows, cols = check_fits(U, parts, name)
    # [cols, rows]: column i of W is row WT[i]; always a copy (weight may be a transposed view)
    WT = torch.empty(cols, rows, dtype=torch.float32, device=parts[0].device)
    start = 0
    for p in parts:
        WT[:, start : start + p.shape[0]].copy_(p.detach().t())
        start += p.shape[0]
    del parts
    if nm is not None:
        blocksize = max(nm[1], blocksize - blocksize % nm[1])
    pruneT = torch.zeros(cols, rows, dtype=torch.bool, device=WT.device)
    done = [0] * len(segments)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        Wt = WT[i1:i2]  # the block [b, rows], a view: updated in place
        U1 = U[i1:i2, i1:i2]
        d = U1.diagonal().unsqueeze(1)  # [b, 1]
        dead1 = dead[i1:i2]
        forced1 = forced[:, i1:i2].t() if forced is not None else None  # [b, rows]
        Pt = pruneT[i1:i2]  # pruned in this block [b, rows], a view
        if nm is None:
            saliency = Wt.square() / d.square()
            saliency[dead1] = 0.0
            if forced1 is not None:
                saliency[forced1] = -1.0
            for s, seg in enumerate(segments):
                # cumulative targeting: exact count per segment once all blocks are done
                width = seg.stop - seg.start
                goal = round(seg.prune * i2 / cols) if i2 < cols else seg.prune
                k = min(max(goal - done[s], 0), width * (i2 - i1))
                if forced1 is not None:
                    k = max(k, int(forced1[:, seg.start : seg.stop].sum()))
                if k:
                    flat = saliency[:, seg.start : seg.stop].reshape(-1)
                    idx = torch.topk(flat, k, largest=False, sorted=False).indices
                    part = torch.zeros(flat.shape, dtype=torch.bool, device=WT.device)
                    Pt[:, seg.start : seg.stop] = part.index_fill_(0, idx, True).view(-1, width)
                done[s] += k
        scale = Pt.float() / d  # err_i = w_i * P_i / d_i
        Et = torch.empty_like(Wt)  # [b, rows] scaled errors
        with _one_thread(WT):  # the column loop's ops are too small to split across threads
            _column_loop(Wt, U1, d, dead1, forced1, Pt, scale, Et, nm)
        Wt.masked_fill_(Pt, 0.0)  # the block is final: later updates touch later columns only
        if not torch.isfinite(Wt).all():
            raise WeightError(f"{name}: SparseGPT produced non-finite weights; raise the damping")
        WT[i2:].addmm_(U[i1:i2, i2:].t(), Et, alpha=-1.0)  # lazy update, in place
    return WT.t(), pruneT.logical_not_().t()
