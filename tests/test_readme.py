"""The README's Python tour runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
    model = namespace["model"]
    zeros = sum(int((m.weight == 0).sum()) for m in model if hasattr(m, "weight"))
    total = sum(m.weight.numel() for m in model if hasattr(m, "weight"))
    assert abs(zeros / total - 0.9) < 1e-3
