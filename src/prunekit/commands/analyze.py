"""``prunekit analyze``: sensitivity curves, per-layer sparsity and a sweep, as PNG and JSON."""

from __future__ import annotations

import argparse

from .base import COMMANDS, Command


@COMMANDS.register("analyze", examples=(["--help"],))  # argv
class AnalyzeCommand(Command):
    """Plot per-layer sensitivity, a sensitivity-allocated model's layer sparsity and a sweep of
    quality, size and latency against sparsity (PNG + JSON in OUT)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", metavar="MODEL", help="a Hugging Face model directory")
        parser.add_argument(
            "--calibration",
            required=True,
            metavar="FILE.txt|.jsonl",
            help="text the data-aware criteria calibrate on (or builtin:docstrings)",
        )
        parser.add_argument(
            "--eval", required=True, metavar="FILE.txt|.jsonl", help="text the metric is taken on"
        )
        parser.add_argument(
            "-o", "--output", required=True, metavar="DIR", help="folder for the PNGs and JSON"
        )
        parser.add_argument("--criterion", default="wanda", help="criterion (default: wanda)")
        parser.add_argument(
            "--granularity", default="unstructured", help="granularity (default: unstructured)"
        )
        parser.add_argument(
            "--sparsities", default="0.3,0.5,0.7", help="grid (default: 0.3,0.5,0.7)"
        )
        parser.add_argument("--sparsity", type=float, default=None, help="budget of the bars")
        parser.add_argument(
            "--units",
            choices=["layer", "block"],
            default="layer",
            help="prune each layer alone, or each block alone (default: layer)",
        )
        parser.add_argument(
            "--nsamples", type=int, default=32, help="calibration windows (default: 32)"
        )
        parser.add_argument(
            "--seq-len", type=int, default=128, help="tokens per window (default: 128)"
        )
        parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")

    def run(self, args: argparse.Namespace) -> int:
        import copy
        import tempfile
        from pathlib import Path

        import torch

        from .. import prune, report, save, sparsify
        from ..analysis import plots
        from ..analysis.sensitivity import (
            apply_levels,
            atomic_json,
            layer_sparsities,
            output_error,
            sensitivity,
        )
        from ..config import PruneConfig
        from ..errors import ConfigError
        from ..modelio import load_model
        from ..runtime.timing import MedianTimer
        from .prune import calibration_batches

        try:
            grid = [float(s) for s in args.sparsities.split(",")]
        except ValueError:
            raise ConfigError(
                f"--sparsities must be numbers like 0.3,0.5, not {args.sparsities!r}"
            ) from None
        out = Path(args.output)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"-o {out} is a file; pass a directory")
        out.mkdir(parents=True, exist_ok=True)
        model = load_model(args.model).eval()
        job = PruneConfig(
            sparsity=grid[0], criterion=args.criterion, granularity=args.granularity, seed=args.seed
        )
        text = argparse.Namespace(**vars(args), loss=None)
        calib = calibration_batches(text, model, job)
        text.calibration = args.eval
        evals = calibration_batches(text, model, job)
        metric = "relative output error vs dense (eval text)"
        err = output_error(model, evals)
        sens = sensitivity(
            model, err, grid, args.granularity, args.criterion, units=args.units, data=calib,
            cache=out / "sensitivity_cache.json", progress=True, seed=args.seed,
        )  # fmt: skip
        plots.plot_sensitivity(sens, out / "sensitivity.png", metric)

        budget = args.sparsity if args.sparsity is not None else grid[len(grid) // 2]
        allocated = copy.deepcopy(model)
        apply_levels(
            allocated, layer_sparsities(sens, budget), args.criterion, args.granularity, calib
        )
        layers = report(allocated).to_dict()["layers"]
        plots.plot_layer_sparsity(
            layers, out / "layer_sparsity.png",
            f"Per-layer sparsity, sensitivity allocation at {100 * budget:.0f}% overall",
        )  # fmt: skip

        rows, fast = [], {}
        ids = evals[0]["input_ids"]
        for s in [0.0, *grid]:
            m = copy.deepcopy(model)
            if s > 0:
                prune(
                    m,
                    s,
                    granularity=args.granularity,
                    criterion=args.criterion,
                    data=calib,
                    seed=args.seed,
                )
            with tempfile.TemporaryDirectory() as tmp:
                size = sum(f.stat().st_size for f in save(m, tmp).iterdir())
            rows.append({"sparsity": s, "metric": err(m), "size_mib": size / 2**20})
            fast[f"{s:g}"] = sparsify(m, batch_size=ids.shape[0], example_inputs=(ids,))
        # every model timed in one interleaved run, so that they share the machine's load
        with torch.inference_mode():
            seconds = MedianTimer(budget_s=2.0)(
                {k: (lambda f=f: f(**evals[0])) for k, f in fast.items()}
            )
        for r in rows:
            r["latency_ms"] = 1000 * seconds[f"{r['sparsity']:g}"]
        plots.plot_sweep(rows, out / "sweep.png", metric)
        atomic_json(
            out / "analysis.json",
            {
                "metric": metric,
                "sensitivity": sens.to_dict(),
                "allocation": {"sparsity": budget, "layers": layers},
                "sweep": rows,
            },
        )
        print(f"wrote {out}/sensitivity.png, layer_sparsity.png, sweep.png, analysis.json")
        return 0
