"""``prunekit recover``: distil a pruned checkpoint from its dense model on a text file."""

from __future__ import annotations

import argparse

from .base import COMMANDS, Command
from .prune import add_output_options


@COMMANDS.register("recover", examples=(["--help"],))  # argv
class RecoverCommand(Command):
    """Recover a pruned model's quality by distillation from the dense teacher; masks held.

    PRUNED is a folder written by `prunekit prune` (or pk.save); --teacher is the dense Hugging Face
    model directory it was pruned from (its tokenizer tokenizes --data). The pruned weights stay
    exactly zero; OUT is written like `prunekit prune`'s output (smallest format per tensor, the
    teacher's tokenizer and configs carried over, a model card; the teacher is the baseline).
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pruned", metavar="PRUNED", help="a pruned prunekit output directory")
        parser.add_argument(
            "--teacher", required=True, metavar="MODEL", help="the dense Hugging Face directory"
        )
        parser.add_argument(
            "--data", required=True, metavar="FILE.txt|.jsonl", help="training text"
        )
        parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
        parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
        parser.add_argument("--temperature", type=float, default=2.0, help="KD temperature")
        parser.add_argument(
            "--alpha",
            type=float,
            default=0.5,
            help="weight of distillation against the task loss, where labels exist",
        )
        parser.add_argument("--seq-len", type=int, default=256, help="tokens per window")
        parser.add_argument("--batch-size", type=int, default=4, help="windows per step")
        parser.add_argument(
            "--nsamples", type=int, default=100_000, help="at most this many windows of --data"
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="seed of data order and pruning ties (default 0)"
        )
        add_output_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        import os
        from pathlib import Path

        from rich.console import Console

        from ..analysis.report import report
        from ..errors import PrunekitError
        from ..formats.header import read_header
        from ..masks import MaskState, bake, shrink_mask
        from ..modelio import load_model
        from ..outfolder import check_output_dir
        from ..targets import select_targets
        from ..textdata import load_calibration
        from ..train import distill
        from .prune import input_bytes, write_output

        if args.steps < 1:
            raise PrunekitError(f"--steps must be >= 1, got {args.steps}")
        if not (Path(args.pruned) / "prunekit.json").is_file():
            raise PrunekitError(f"{args.pruned} holds no prunekit.json: pass a pruned folder")
        if not (Path(args.teacher) / "config.json").is_file():
            raise PrunekitError(f"--teacher {args.teacher} is not a Hugging Face model directory")
        check_output_dir(args.output, args.pruned)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.teacher, local_files_only=True)
        batches = load_calibration(
            args.data, tokenizer, args.nsamples, args.seq_len, args.batch_size
        )
        student = load_model(args.pruned)
        teacher = load_model(args.teacher).eval()
        if not MaskState(student).masks:  # hold the checkpoint's zeros as masks
            for t in select_targets(student, None, None):
                zeros = t.weight == 0
                if zeros.any():
                    shrink_mask(t.module, t.param, ~zeros)
        history = distill(
            student,
            teacher,
            batches,
            steps=args.steps,
            lr=args.lr,
            temperature=args.temperature,
            alpha=args.alpha,
            seed=args.seed,
            progress=True,
        )
        bake(student)
        header = read_header(args.pruned)
        recovery = {
            "teacher": str(args.teacher),
            "data": str(args.data),
            "steps": history.steps,
            "loss_first": history.losses[0],
            "loss_last": history.losses[-1],
            "cpu_seconds": round(history.cpu_seconds, 1),
        }
        # written as `prunekit prune` writes: the teacher is the baseline (bench, eval) and the
        # source of the carried tokenizer and configs
        out = argparse.Namespace(model=args.teacher, weights=None, output=args.output,
                                 format=args.format, _argv=args._argv)  # fmt: skip
        facts = write_output(
            student, out, header.get("config"), None, input_bytes(out, teacher), recovery
        )
        Console().print(report(student))
        size, base = facts["bytes"], facts["input_bytes"]
        print(
            f"distilled {history.steps} steps: loss {history.losses[0]:.4g} -> "
            f"{history.losses[-1]:.4g} ({history.cpu_seconds / 60:.1f} CPU-min); wrote "
            f"{args.output}: {size:,} bytes, {size / base:.1%} of the teacher's {base:,}; "
            f"carried over {len(facts['carried'])} file(s)"
        )
        return 0
