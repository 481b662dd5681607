"""``prunekit export``: a pruned model as an ONNX file, checked against onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._model_options import add_model_options
from .base import COMMANDS, Command
from .bench import (
    add_input_options,
    check_input_options,
    inputs_for,
    load_pruned,
    recorded,
)


@COMMANDS.register("export", examples=(["--help"],))  # argv
class ExportCommand(Command):
    """Export a pruned model to ONNX, traced on its recorded example inputs, checked with
    onnxruntime.

    ONNX stores every weight dense: a finalized (unstructured or N:M) model exports as large as
    the dense one, while a physically shrunk (channel or head) model exports smaller.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_options(parser)
        parser.add_argument(
            "--onnx", action="store_true", required=True, help="export to ONNX (the one format)"
        )
        parser.add_argument(
            "-o",
            "--output",
            default=None,
            metavar="FILE.onnx",
            help="the ONNX file to write (default: MODEL's folder name + .onnx, next to it)",
        )
        add_input_options(parser)
        parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")

    def run(self, args: argparse.Namespace) -> int:
        from ..errors import PrunekitError
        from ..export import export_onnx

        if args.output is None:
            if not Path(args.model).is_dir():
                raise PrunekitError("pass -o FILE.onnx for a package.module:factory model")
            args.output = str(Path(args.model).resolve()) + ".onnx"
        out = Path(args.output)
        if out.is_dir():
            raise PrunekitError(f"-o {out} is a folder; pass a file name such as model.onnx")
        check_input_options(args)
        header = recorded(args.model)
        model = load_pruned(args)
        inputs = inputs_for(args, model, header)
        path = export_onnx(model, inputs, out, opset=args.opset)
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        print(
            f"wrote {path}: {path.stat().st_size:,} bytes ({params:,} bytes of parameters, "
            "all stored dense); onnxruntime matches the model on the example inputs"
        )
        return 0
