"""Every Python block of the README runs as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prunekit.threads import torch_threads

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_tour_runs():
    namespace: dict = {}
    with torch_threads(1):  # a tiny model: more threads only spin on a loaded machine
        exec(compile(BLOCKS[0], str(README), "exec"), namespace)
    model = namespace["model"]
    zeros = sum(int((m.weight == 0).sum()) for m in model if hasattr(m, "weight"))
    total = sum(m.weight.numel() for m in model if hasattr(m, "weight"))
    assert abs(zeros / total - 0.9) < 1e-3


@pytest.mark.slow
def test_every_readme_block_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # the blocks write out/, hf/, sens.json, trainer-out/
    namespace: dict = {}
    with torch_threads(1), pytest.warns(UserWarning):  # e.g. the global cap says so
        for i, block in enumerate(BLOCKS):
            exec(compile(block, f"{README}: python block {i}", "exec"), namespace)
    assert len(BLOCKS) >= 8
    assert namespace["small"] is not None and namespace["levels"]
