"""Storage benchmark: bits per original weight of every format, next to the entropy limit.

    python benchmarks/storage.py            # 4096x4096 and 768x3072 (about a minute)
    python benchmarks/storage.py --quick    # small shapes, a few seconds

Weights are Gaussian, pruned by magnitude (unstructured) or to 2:4 along the input dimension. The
limit is ``n·H(density) + nnz·value_bits``; "ratio" is auto's size over it. Times are for the
whole ``auto`` choice (it encodes with every format) and for decoding the chosen format.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich import box
from rich.console import Console
from rich.table import Table

from prunekit.formats import FORMATS, entropy_limit_bits
from prunekit.formats.auto import encode
from prunekit.granularity.nm import NM
from prunekit.granularity.unstructured import Unstructured


def pruned(shape: tuple[int, int], pattern: str, dtype: torch.dtype, seed: int) -> torch.Tensor:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if pattern == "2:4":
        keep = NM(2, 4).select(w.abs(), 0.5)
    else:
        keep = Unstructured().select(w.abs(), float(pattern.rstrip("%")) / 100)
    return torch.where(keep, w, torch.zeros(())).to(dtype)


def row(shape, pattern, dtype, seed) -> list[str]:
    t = pruned(shape, pattern, dtype, seed)
    n, nnz, vbits = t.numel(), int(torch.count_nonzero(t)), 8 * t.element_size()
    limit = entropy_limit_bits(n, nnz, vbits) / n
    sizes = {}
    for name in FORMATS.names():
        enc = FORMATS.get(name)().encode(t)
        sizes[name] = f"{8 * enc.nbytes / n:.3f}" if enc is not None else "-"
    start = time.perf_counter()
    chosen, enc = encode(t)
    encoded = time.perf_counter()
    out = FORMATS.get(chosen)().decode(enc.parts, enc.meta, tuple(t.shape), t.dtype)
    decoded = time.perf_counter()
    if not torch.equal(out, t):
        raise SystemExit(f"{chosen} did not round-trip {shape} {pattern} {dtype}")
    bits = 8 * enc.nbytes / n
    return [
        "x".join(map(str, shape)), pattern, str(dtype).removeprefix("torch."), f"{limit:.3f}",
        *sizes.values(), chosen, f"{bits:.3f}", f"{bits / limit:.3f}",
        f"{(encoded - start) * 1e3:.0f}", f"{(decoded - encoded) * 1e3:.0f}",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [(256, 512)] if args.quick else [(4096, 4096), (768, 3072)]
    table = Table(title="bits per weight by format (limit = n·H(density) + nnz·value bits)")
    table.box = box.MARKDOWN
    for col in ("shape", "sparsity", "dtype", "limit", *FORMATS.names(), "auto", "auto bits"):
        table.add_column(col, justify="right")
    for col in ("ratio", "enc ms", "dec ms"):
        table.add_column(col, justify="right")
    for shape in shapes:
        for pattern in ("50%", "70%", "90%", "95%", "2:4"):
            for dtype in (torch.float32, torch.float16):
                table.add_row(*row(shape, pattern, dtype, seed=0))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
