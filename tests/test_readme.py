"""The README's Python tour runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from prunekit.threads import torch_threads

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs():
    tour = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[0]
    namespace: dict = {}
    with torch_threads(1):  # a tiny model: more threads only spin on a loaded machine
        exec(compile(tour, str(README), "exec"), namespace)
    model = namespace["model"]
    zeros = sum(int((m.weight == 0).sum()) for m in model if hasattr(m, "weight"))
    total = sum(m.weight.numel() for m in model if hasattr(m, "weight"))
    assert abs(zeros / total - 0.9) < 1e-3
