"""``prunekit recover``: distil a pruned checkpoint from its dense model on a text file."""

from __future__ import annotations

import argparse
import dataclasses

from ._recover_options import add_distill_options
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
            "--data",
            required=True,
            metavar="FILE.txt|.jsonl",
            help="training text (or builtin:docstrings): split into sentences for a sentence "
            "encoder (a JSONL line or a .txt line is one text), else into token windows",
        )
        parser.add_argument(
            "--steps", type=int, default=None, help="optimizer steps (or give --cpu-minutes)"
        )
        parser.add_argument(
            "--seq-len",
            type=int,
            default=None,
            help="tokens per window, or at most per sentence (default 128)",
        )
        parser.add_argument(
            "--nsamples",
            type=int,
            default=100_000,
            help="at most this many sentences or windows of --data",
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="seed of data order and dropout (default 0)"
        )
        add_distill_options(parser)
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
        from ..train import distill
        from ..train.recipe import training_batches
        from ._recover_options import (
            apply_recipe,
            budget,
            check_distill_options,
            describe,
            distill_recipe,
        )
        from .prune import input_bytes, write_output

        if args.steps is None and args.distill_cpu_minutes is None:
            raise PrunekitError("pass --steps N, --cpu-minutes M, or both")
        if args.steps is not None and args.steps < 1:
            raise PrunekitError(f"--steps must be >= 1, got {args.steps}")
        if args.nsamples < 1 or (args.seq_len is not None and args.seq_len < 2):
            raise PrunekitError("--nsamples must be >= 1 and --seq-len >= 2")
        check_distill_options(args)
        if not (Path(args.pruned) / "prunekit.json").is_file():
            raise PrunekitError(f"{args.pruned} holds no prunekit.json: pass a pruned folder")
        if not (Path(args.teacher) / "config.json").is_file():
            raise PrunekitError(f"--teacher {args.teacher} is not a Hugging Face model directory")
        check_output_dir(args.output, args.pruned)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.teacher, local_files_only=True)
        student = load_model(args.pruned)
        teacher = load_model(args.teacher).eval()
        recipe = distill_recipe(args, teacher, args.seq_len)
        longest = getattr(tokenizer, "model_max_length", recipe.seq_len) or recipe.seq_len
        recipe = recipe.replace(seq_len=min(recipe.seq_len, longest))
        batches = training_batches(args.data, tokenizer, recipe, args.nsamples, args.seed)
        options, frozen = apply_recipe(recipe, student)
        if not MaskState(student).masks:  # hold the checkpoint's zeros as masks
            for t in select_targets(student, None, None):
                zeros = t.weight == 0
                if zeros.any():
                    shrink_mask(t.module, t.param, ~zeros)
        print(describe(recipe, len(frozen)) + f"; {len(batches)} batches of {args.data}")
        history = distill(
            student,
            teacher,
            batches,
            steps=args.steps or 10**9,
            cpu_budget=budget(args),
            seed=args.seed,
            progress=True,
            **options,
        )
        bake(student)
        header = read_header(args.pruned)
        recovery = {
            "teacher": str(args.teacher),
            "data": str(args.data),
            "recipe": dataclasses.asdict(recipe),
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
