"""The output folder of ``prunekit prune -o OUT``: the compressed checkpoint, every non-weight file
of the input folder (tokenizer, processor, generation and sentence-transformers configs), and a
short model card with the report. Each file is written atomically."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: files that hold weights (of this or another runtime): the pruned checkpoint replaces them
WEIGHT_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".onnx_data",
    ".gguf", ".ot", ".tflite", ".pb", ".mlmodel", ".npz",
)  # fmt: skip
#: folders of other runtimes' exports of the unpruned model
WEIGHT_FOLDERS = {"onnx", "openvino", "coreml", "tflite", ".git", ".cache"}
#: written by ``pk.save`` (config.json patched for a shrunk model) or by this module
OWN_FILES = {"config.json", "prunekit.json", "README.md"}
CARD_FILE = "README.md"


def check_output_dir(out: str | os.PathLike, source: str | os.PathLike | None) -> Path:
    """Refuse an output that is a file, or the input folder itself (before any work is done)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} is a file; pass a folder to write the pruned model into")
    same = source is not None and out.exists() and out.resolve() == Path(source).resolve()
    if same:
        raise ConfigError(f"-o {out} is the input folder; write the pruned model elsewhere")
    return out


def carried_files(source: Path) -> list[Path]:
    """The non-weight files of the folder ``source``, relative to it, in sorted order."""
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or (path.is_symlink() and not path.resolve().is_file()):
            continue
        if any(part in WEIGHT_FOLDERS for part in rel.parts[:-1]):
            continue
        name = rel.name
        if name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json"):
            continue
        if len(rel.parts) == 1 and name in OWN_FILES:
            continue
        if name.startswith(".pk-"):  # a temporary of an interrupted save
            continue
        files.append(rel)
    return files


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".pk-{secrets.token_hex(6)}.{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def carry_over(source: Path, out: Path) -> list[str]:
    """Copy :func:`carried_files` of ``source`` into ``out`` (atomically each); their names."""
    names = []
    for rel in carried_files(source):
        target = out / rel
        tmp = target.with_name(f".pk-{secrets.token_hex(6)}.{target.name}.tmp")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(source / rel, tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        names.append(rel.as_posix())
    return names


def model_card(
    *,
    source: str,
    command: str,
    header: dict[str, Any],
    report_text: str,
    carried: list[str],
    input_bytes: int | None,
    output_bytes: int,
    described: bool | None = None,
) -> str:
    """The README.md of the output folder: what was done, the sizes, the report, how to load.

    ``described``: whether the folder's config.json rebuilds the model (None: not a Hugging Face
    model, or it cannot be checked)."""
    from . import __version__

    storage = header.get("storage") or {}
    formats = sorted({e["format"] for e in header.get("tensors", {}).values()})
    all_dense = formats == ["dense"]
    ratio = (
        f" ({output_bytes / input_bytes:.1%} of the input's {input_bytes:,})" if input_bytes else ""
    )
    lines = [
        "---",
        "tags: [prunekit, pruned]",
        "---",
        f"# {Path(source).name or source}, pruned with prunekit",
        "",
        f"Pruned from `{source}` with prunekit {__version__}:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- folder size without this card: {output_bytes:,} bytes{ratio}",
        f"- weight storage formats: {', '.join(formats) or '-'}"
        + (
            f" ({storage.get('bits_per_weight'):.2f} bits per weight)"
            if storage.get("bits_per_weight")
            else ""
        ),
        f"- files carried over from the input: {', '.join(carried) or 'none'}",
        "",
        "Load it with prunekit (exact weights, no pickle):",
        "",
        "```python",
        "import prunekit as pk",
        'model = pk.load("THIS_FOLDER")  # a factory model: pk.load(FOLDER, model=factory())',
        "```",
        "",
    ]
    if described is False:
        lines += [
            "config.json cannot describe these shapes (this architecture derives a size from "
            "others, or the layers differ): plain `transformers` refuses the folder; "
            "`pk.load` loads it exactly.",
            "",
        ]
    elif not all_dense:
        lines += [
            "The weights are stored compressed (`prunekit.safetensors`), which plain "
            "`transformers` refuses to load rather than misread; `prunekit prune ... --format "
            "dense` writes a folder that it loads.",
            "",
        ]
    elif described:
        lines += [
            "Plain `transformers` loads it too (config.json holds the new widths and counts): "
            '`AutoModel.from_pretrained("THIS_FOLDER")` or the model\'s own class.',
            "",
        ]
    lines += ["## Report", "", "```", report_text.rstrip(), "```", ""]
    return "\n".join(lines)
