"""SparseGPT as a criterion: solves each block's layers with the OBS solver of
:mod:`prunekit.reconstruct.sparsegpt`, sharing one Hessian between layers that share inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..granularity import Granularity
from ..granularity.nm import NM
from ..granularity.unstructured import Unstructured
from ..masks import get_mask
from ..reconstruct.sparsegpt import (
    Segment,
    check_fits,
    inverse_hessian_factor,
    prune_with_factor,
)
from ..targets import Target
from .base import CRITERIA, ScoreContext, Solver
from .wanda import input_norms


def nm_keep(granularity: NM, sparsity: float) -> tuple[int, int]:
    """(weights kept per group, M) at ``sparsity``: as :meth:`NM.select` does."""
    keep = granularity.select(torch.arange(granularity.m, dtype=torch.float32)[None], sparsity)
    return int(keep.sum()), granularity.m


@CRITERIA.register(
    "sparsegpt",
    examples=("sparsegpt", {"type": "sparsegpt", "damp": 0.05, "block_size": 16}),
)
@dataclass(frozen=True)
class SparseGPT(Solver):
    """OBS reconstruction in column blocks of ``block_size``, with ``damp`` times the mean
    Hessian diagonal added to it; unstructured and N:M.

    Its :meth:`scores` (used only to spread sparsity across layers, e.g. ``scope="owl"``) are
    |W|·‖X_j‖₂, the diagonal-Hessian approximation of the OBS saliency.
    """

    stats: ClassVar[frozenset[str]] = frozenset({"hessian"})

    damp: float = 0.01
    block_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.damp < 1.0:
            raise ConfigError(f"SparseGPT.damp must be in (0, 1), got {self.damp!r}")
        if self.block_size < 1:
            raise ConfigError(f"SparseGPT.block_size must be >= 1, got {self.block_size!r}")

    def supports(self, granularity: Granularity) -> str | None:
        if isinstance(granularity, (Unstructured, NM)):
            return None
        return (
            f"sparsegpt reconstructs single weights; it supports unstructured and N:M, not "
            f"{granularity.spec} (for channels with a least-squares refit use "
            "criterion='regression' with granularity='unstructured'; for structured pruning "
            "pick magnitude, taylor, wanda, fpgm, apoz or mean-activation)"
        )

    def scores(self, target: Target, ctx: ScoreContext) -> torch.Tensor:
        return target.matrix().abs().float() * input_norms(target, ctx)

    def solve(
        self,
        targets: list[Target],
        ctx: ScoreContext,
        sparsities: dict[str, float],
        granularity: Granularity,
    ) -> dict[str, torch.Tensor]:
        reason = self.supports(granularity)
        if reason is not None:
            raise ConfigError(reason)
        groups: dict[int, list[Target]] = {}  # targets sharing one input -> one Hessian
        for t in targets:
            st = ctx.stats[t.qualname].inputs
            groups.setdefault(id(st), []).append(t)
        keep: dict[str, torch.Tensor] = {}
        for members in groups.values():
            keep.update(self._solve_shared(members, ctx, sparsities, granularity))
        return keep

    def _solve_shared(
        self,
        targets: list[Target],
        ctx: ScoreContext,
        sparsities: dict[str, float],
        granularity: Granularity,
    ) -> dict[str, torch.Tensor]:
        """Stack the rows of layers sharing one input and solve them against its Hessian.

        With G conv groups the Hessian is ``[G, cols, cols]`` and output rows split into G
        chunks; chunk g of every layer is solved against ``H[g]``.
        """
        inputs = ctx.stats[targets[0].qualname].inputs
        xtx = inputs.xtx  # [G, cols, cols]; H = 2XᵀX/N is formed inside the factor's one copy
        G = xtx.shape[0]
        name = ", ".join(t.qualname for t in targets)
        # memory: XᵀX and the factor while the factor is built; then (XᵀX freed if
        # ctx.release_stats) the factor, one float32 working copy of the stacked rows and its
        # mask; with conv groups the results are gathered in one more copy before the write-back
        new = {t.qualname: torch.empty_like(t.matrix(), dtype=torch.float32) for t in targets}
        new = new if G > 1 else {}
        kept = {t.qualname: torch.empty_like(t.matrix(), dtype=torch.bool) for t in targets}
        for g in range(G):
            parts, segments, forced, start = [], [], [], 0
            olds = [get_mask(t.module, t.param) for t in targets]
            for t, old in zip(targets, olds, strict=True):
                m = t.matrix()  # [out, cols]
                rows = m.shape[0] // G
                chunk = m[g * rows : (g + 1) * rows]  # a view: the solver makes the one copy
                parts.append(chunk)
                if any(o is not None for o in olds):  # earlier masks: their zeros are forced
                    forced.append(
                        torch.zeros_like(chunk, dtype=torch.bool)
                        if old is None
                        else ~t.to_matrix(old)[g * rows : (g + 1) * rows]
                    )
                total = round(sparsities[t.qualname] * m.numel())
                share = total // G + (g < total % G)
                segments.append(Segment(start, start + rows, share))
                start += rows
            nm = (
                nm_keep(granularity, max(sparsities.values()))
                if isinstance(granularity, NM)
                else None
            )
            hessian = xtx[g].to(parts[0].device)  # [cols, cols]
            check_fits(hessian, parts, name)
            dead = hessian.diagonal() == 0
            scale = 2.0 / max(inputs.n, 1)
            factor = inverse_hessian_factor(hessian, self.damp, name, scale=scale, dead=dead)
            del hessian
            if ctx.release_stats and g == G - 1:  # freed before the sweep's working copies
                del xtx, inputs.values["xtx"]
            W, mask = prune_with_factor(
                parts,  # stacked [rows, cols] inside the sweep's working copy
                factor,
                dead,
                segments,
                nm=nm,
                forced=torch.cat(forced) if any(f.any() for f in forced) else None,
                blocksize=self.block_size,
                name=name,
            )
            del factor
            del parts
            for t, seg in zip(targets, segments, strict=True):
                rows = seg.stop - seg.start
                kept[t.qualname][g * rows : (g + 1) * rows] = mask[seg.start : seg.stop]
                if G == 1:
                    t.weight.data.copy_(t.from_matrix(W[seg.start : seg.stop]).to(t.weight.dtype))
                else:
                    new[t.qualname][g * rows : (g + 1) * rows] = W[seg.start : seg.stop]
            del W, mask
        for t in targets if G > 1 else ():
            w = t.weight
            w.data.copy_(t.from_matrix(new[t.qualname]).to(w.dtype))
        return kept
